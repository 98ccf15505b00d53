"""The explorer page in a real headless Chromium (driven by Playwright) against a real server.

Playwright drives the system's Chromium (``tests/support/browser.py``); skipped, saying why,
where none is installed. Set ``EXPLORER_SCREENSHOTS=<folder>`` to keep the screenshots it takes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.support.browser import Browser, keep, needs_chromium, open_browser
from tests.support.models import make_model_repo
from tests.support.servers import running_server

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = make_model_repo(tmp_path_factory.mktemp("explorer"))
    settings = Settings(model_repository=repo, providers=["CPUExecutionProvider"])
    with running_server(settings, grpc=False) as running:
        yield running.url


@pytest.fixture
def browser() -> Iterator[Browser]:
    with open_browser() as watched:
        yield watched


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
    keep(tmp_path / "explorer-calculator.png")

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
    keep(tmp_path / "explorer-classify.png")
    shot = Image.open(io.BytesIO((tmp_path / "explorer-classify.png").read_bytes()))
    assert shot.width >= 1000

    # Nothing left the server: every request went to it (or stayed in the page).
    outside = [u for u in browser.requested if not u.startswith((server, "blob:", "data:"))]
    assert not outside, json.dumps(outside)
    assert any("/activations" in u for u in browser.requested)
    # The 422 above is the one expected error; nothing else (scripts, CSP) went wrong.
    unexpected = [e for e in browser.errors if "/v1/shapes" not in e or "422" not in e]
    assert not unexpected, unexpected
