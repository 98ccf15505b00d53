"""The explorer page in a real headless Chromium (driven by Playwright) against a real server.

Playwright drives the system's Chromium (``make browser``: Debian's package) through
``executable_path``; it never downloads a browser. Skipped, saying why, where no Chromium is
installed. Set ``EXPLORER_SCREENSHOTS=<folder>`` to keep the screenshots it takes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from service.settings import Settings
from tests.support.models import lecture_graph, make_model_repo, write_model
from tests.support.servers import running_server, wait_until

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The binary named by ``$CHROMIUM``, else the first Chromium on the PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (make browser, apt-get install chromium, or set CHROMIUM=<binary>): "
    "the explorer page was not checked in a browser",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = make_model_repo(tmp_path_factory.mktemp("explorer"))
    settings = Settings(model_repository=repo, providers=["CPUExecutionProvider"])
    with running_server(settings, grpc=False) as running:
        yield running.url


@dataclass
class Browser:
    """One page in headless Chromium, with every URL it requested and every error it logged
    (script exceptions, Content-Security-Policy violations, failed loads)."""

    page: Page
    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} {message.location.get('url', '')}".strip())

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The value of ``expression`` once it is truthy. Polled with ``evaluate``: the page's CSP
        (no 'unsafe-eval') refuses the eval behind Playwright's ``wait_for_function``."""
        last: list[Any] = [None]

        def truthy() -> bool:
            last[0] = self.page.evaluate(expression)
            return bool(last[0])

        wait_until(truthy, timeout_s, lambda: f"{expression!r} still {last[0]!r}", 0.1)
        return last[0]


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            watched = Browser(chromium.new_page(viewport={"width": 1280, "height": 1000}))
            watched.page.on("request", lambda request: watched.requested.append(request.url))
            watched.page.on("console", watched.console)
            watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
            yield watched
        finally:
            chromium.close()


def _keep(screenshot: Path) -> None:
    folder = os.environ.get("EXPLORER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(folder) / screenshot.name)


def test_page_classifies_an_upload_and_shows_feature_maps_and_the_calculator(
    server: str, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    page.goto(server + "/")
    # The served model's layer table, read from the graph.
    assert browser.wait_for("document.querySelectorAll('#layer-table tbody tr').length") == 8
    assert "122,570 parameters" in page.evaluate("$('layer-title').textContent")

    # The calculator tab starts from the lecture's model.
    page.click("#tab-shapes")
    assert page.evaluate("$('panel-shapes').hidden") is False
    assert browser.wait_for("$('calc-total').textContent === '122,570' && 'ok'") == "ok"
    rows = page.evaluate("[...document.querySelectorAll('#calc-table tbody tr')].length")
    assert rows == 8
    page.screenshot(path=tmp_path / "explorer-calculator.png", full_page=True)
    _keep(tmp_path / "explorer-calculator.png")

    # An impossible stack shows the service's 422 message.
    page.fill("#layers", '[{"type": "dense", "units": 4}]')  # fires input, as typing does
    error = browser.wait_for("!$('calc-error').hidden && $('calc-error').textContent")
    assert "add a flatten layer" in error
    assert page.evaluate("$('calc-total').textContent") == "-"

    # Upload an image: top classes and one feature-map grid per conv/pool layer.
    page.click("#tab-classify")
    pixels = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    upload = tmp_path / "upload.png"
    Image.fromarray(pixels).save(upload)
    page.set_input_files("#file", upload)
    shown = browser.wait_for(
        "document.querySelectorAll('#predictions li strong').length === 5 && "
        "[...document.querySelectorAll('#predictions li')].map(li => li.textContent)"
    )
    expected = httpx.post(
        f"{server}/v1/models/cifar10_cnn:classify",
        files={"file": ("upload.png", upload.read_bytes(), "image/png")},
        params={"top_k": 5},
    ).json()["predictions"][0]
    assert [text.split(" ")[0] for text in shown] == [p["name"] for p in expected]
    assert shown[0].endswith(f"{100 * expected[0]['probability']:.1f}%")
    bar = "document.querySelector('#predictions .bar').getBoundingClientRect().width"
    assert page.evaluate(bar) == round(150 * expected[0]["probability"])

    loaded = browser.wait_for(
        "(() => { const imgs = [...document.querySelectorAll('#feature-maps figure img')];"
        " return imgs.length === 5 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " && imgs.map(i => [i.closest('figure').dataset.layer, i.naturalWidth, i.naturalHeight]);"
        " })()"
    )
    assert [name for name, _, _ in loaded] == [
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "conv2d_2",
    ]  # fmt: skip
    page.screenshot(path=tmp_path / "explorer-classify.png", full_page=True)
    _keep(tmp_path / "explorer-classify.png")
    shot = Image.open(io.BytesIO((tmp_path / "explorer-classify.png").read_bytes()))
    assert shot.width >= 1000

    # Nothing left the server: every request went to it (or stayed in the page).
    outside = [u for u in browser.requested if not u.startswith((server, "blob:", "data:"))]
    assert not outside, json.dumps(outside)
    assert any("/activations" in u for u in browser.requested)
    # The 422 above is the one expected error; nothing else (scripts, CSP) went wrong.
    unexpected = [e for e in browser.errors if "/v1/shapes" not in e or "422" not in e]
    assert not unexpected, unexpected


@pytest.fixture(scope="module")
def calibrated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The lecture graph with a card that has a calibration block, beside a tiny model without."""
    repo = tmp_path_factory.mktemp("calibrated") / "models"
    bins = [
        {"count": 10 * i, "mean_confidence": (i + 0.5) / 10, "accuracy": i / 10} for i in range(10)
    ]
    calibration = {
        "temperature": 1.5, "n_fit": 1000, "ece_before": 0.08, "ece_after": 0.01,
        "reliability": bins,
    }  # fmt: skip
    changes = {"calibration": calibration}
    write_model(repo, "cifar10_cnn", 1, graph=lecture_graph(), card_changes=changes)
    write_model(repo, "tiny", 1)
    settings = Settings(model_repository=repo, providers=["CPUExecutionProvider"])
    with running_server(settings, grpc=False) as running:
        yield running.url


def test_page_shows_the_served_cards_calibration_and_says_when_there_is_none(
    calibrated_server: str, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    page.goto(calibrated_server + "/")
    summary = browser.wait_for("$('calibration-summary') && $('calibration-summary').textContent")
    assert "v1: T = 1.5000, test ECE 0.0800 before, 0.0100 after" in summary
    assert "1000 held-out training images" in summary
    # One bar per bin that holds predictions (the first is empty), on the card's accuracies.
    assert page.evaluate("document.querySelectorAll('#reliability rect.bin').length") == 9
    page.screenshot(path=tmp_path / "explorer-calibration.png", full_page=True)
    _keep(tmp_path / "explorer-calibration.png")
    page.select_option("#model", "tiny")
    none = browser.wait_for("!$('calibration-summary') && $('calibration').textContent")
    assert "no calibration in its card" in none
    # The tiny graph has no layer table (a 422, expected); nothing else went wrong.
    assert [e for e in browser.errors if "/layers" not in e] == [], browser.errors
