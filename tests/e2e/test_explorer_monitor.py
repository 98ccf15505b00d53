"""The explorer's monitoring panel in headless Chromium against a real server with the prediction
log on (SQLite): real CIFAR-10 test images classified, feedback posted, and the panel drawing
what ``GET /v1/models/{name}/monitor`` answers (bars per class, accuracy, drift state, the
calibration diagram), "no reference" for an older card, and the log-off 503 as a message.

Set ``EXPLORER_SCREENSHOTS=<folder>`` to keep the screenshots it takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench import drift
from bench.drift import DATA, probabilities, sample
from service.core import quality
from service.core.card import CARD_FILE
from tests.support.apps import ADMIN, make_settings
from tests.support.browser import Browser, keep, needs_chromium, open_browser
from tests.support.models import make_model_repo
from tests.support.monitored_model import SHIPPED, add_model_with_reference
from tests.support.servers import running_server, wait_until

pytestmark = [
    needs_chromium,
    pytest.mark.skipif(not (DATA / "test").is_dir(), reason="no CIFAR-10 test split (make data)"),
]
STREAM = 300  # images per stream: clean stays under DRIFT_THRESHOLD 0.1 here, BGR goes over
LABELLED = 150  # of the clean stream, labelled through feedback
BATCH = 50


def add_calibration(folder: Path) -> dict[str, Any]:
    """The card's calibration block for the shipped lecture model as it is (T = 1), its
    reliability and coverage measured on the whole test split, and its accuracy on 2,000 test
    images re-encoded at JPEG q50 and q30. Returns the block, the card's metrics added."""
    images, labels, _ = drift.test_split()  # not imported by name: pytest would collect it
    p = probabilities(SHIPPED, images)
    confidence, correct = p.max(axis=1).tolist(), (p.argmax(axis=1) == labels).tolist()
    ece = quality.expected_calibration_error(confidence, correct)
    coverage = []
    for t in (0.0, 0.5, 0.9):
        kept = [ok for c, ok in zip(confidence, correct, strict=True) if c >= t]
        coverage.append({"abstain_below": t, "coverage": len(kept) / len(correct),
                         "accuracy": sum(kept) / len(kept)})  # fmt: skip
    block = {
        "temperature": 1.0,
        "fitted_on": "nothing: the test fixture keeps T = 1",
        "n_fit": 0,
        "ece_before": ece,
        "ece_after": ece,
        "reliability_diagram": "reliability.png",
        "reliability": [vars(b) for b in quality.reliability(confidence, correct)],
        "coverage": coverage,
    }
    card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    some, their_labels = sample(2_000, 1)  # the export re-encodes the whole split; 2,000 do here
    for q in (50, 30):
        hits = probabilities(SHIPPED, drift.reencode(some, q)).argmax(axis=1) == their_labels
        card["metrics"][f"test_accuracy_jpeg_q{q}"] = float(hits.mean())
    (folder / CARD_FILE).write_text(json.dumps({**card, "calibration": block}), encoding="utf-8")
    return {**block, "metrics": card["metrics"]}


def classify(url: str, model: str, images: np.ndarray, prefix: str) -> None:
    """``images`` through v2 infer, ``BATCH`` a request, request ids ``prefix-<k>``."""
    for k, start in enumerate(range(0, len(images), BATCH)):
        batch = images[start : start + BATCH]
        body = {"id": f"{prefix}-{k}", "inputs": [{"name": "images", "shape": list(batch.shape),
                "datatype": "UINT8", "data": batch.ravel().tolist()}]}  # fmt: skip
        response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text


def monitor(url: str, model: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/models/{model}/monitor", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def settled(url: str, model: str, predictions: int) -> dict[str, Any]:
    """The monitor's answer once ``predictions`` are written (the log writes off the request)."""
    last: list[dict[str, Any]] = [{}]

    def written() -> bool:
        last[0] = monitor(url, model)
        return bool(last[0]["predictions"] >= predictions)

    wait_until(written, 30, lambda: f"{model}: {last[0].get('predictions')} of {predictions}", 0.3)
    return last[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """A server with the log on over ``cifar10_cnn`` (reference and calibration; a clean stream,
    half of it labelled), ``shifted`` (reference; the same images with red and blue swapped) and
    ``tiny`` (neither block; one prediction). Yields (url, the calibration block)."""
    root = tmp_path_factory.mktemp("monitor")
    repo = make_model_repo(root, lecture=False)
    calibration = add_calibration(add_model_with_reference(repo, "cifar10_cnn"))
    add_model_with_reference(repo, "shifted")
    settings = make_settings(repo, prediction_log=True, data_dir=root / "data")
    with running_server(settings, grpc=False) as running:
        url = running.url
        images, labels = sample(STREAM, 0)
        classify(url, "cifar10_cnn", images, "clean")
        classify(url, "shifted", np.ascontiguousarray(images[..., ::-1]), "bgr")
        classify(url, "tiny", images[:1], "tiny")
        feedback = [{"id": f"clean-{i // BATCH}", "item": i % BATCH, "label": int(labels[i])}
                    for i in range(LABELLED)]  # fmt: skip
        answer = httpx.post(f"{url}/v1/feedback", json=feedback, headers=ADMIN, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"labelled": LABELLED}, answer.text
        for model, count in (("cifar10_cnn", STREAM), ("shifted", STREAM), ("tiny", 1)):
            settled(url, model, count)
        wait_until(lambda: monitor(url, "cifar10_cnn")["labelled"]["n"] == LABELLED, 30, "labels")
        yield url, calibration


@pytest.fixture
def browser() -> Iterator[Browser]:
    with open_browser() as watched:
        yield watched


def unexpected(errors: list[str], *allowed: str) -> list[str]:
    """The errors (script, CSP, failed loads) other than ``allowed`` ones and tiny v2's 422 for
    its layer table (the classify tab asks; that graph has no layer in the lecture's terms)."""
    expected: list[tuple[str, ...]] = [
        ("422 (Unprocessable Entity) http", "/v1/models/tiny/layers")
    ]
    expected += [(a,) for a in allowed]
    return [e for e in errors if not any(all(part in e for part in parts) for parts in expected)]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def panel(browser: Browser, model: str) -> dict[str, Any]:
    """What the panel shows once it has drawn ``model``'s answer."""
    return dict(browser.wait_for(
        "(() => { const t = $('monitor-title').textContent;"
        f" if (!t.startsWith('{model} v') || $('monitor-body').hidden) return null;"
        " const all = (s) => [...document.querySelectorAll(s)], n = (s) => all(s).length;"
        " return { title: t, drift: $('monitor-drift').dataset.state,"
        " drift_text: $('monitor-drift').textContent,"
        " meter: all('#monitor-drift svg.meter rect.score').map(r => r.getAttribute('class')),"
        " accuracy: $('monitor-accuracy').dataset.state,"
        " accuracy_text: $('monitor-accuracy').textContent,"
        " class_bars: n('#monitor-classes rect.served'),"
        " class_references: n('#monitor-classes rect.reference'),"
        " class_labels: all('#monitor-classes text').map(t => t.textContent),"
        " bins: n('#monitor-histogram rect.served'),"
        " bin_references: n('#monitor-histogram rect.reference'),"
        " calibration: $('monitor-calibration').textContent,"
        " card_points: n('#monitor-reliability circle.card-point'),"
        " live_points: n('#monitor-reliability circle.live-point'),"
        " diagonal: n('#monitor-reliability line.diagonal'),"
        " coverage_rows: n('#monitor-coverage tbody tr'),"
        " legend: $('monitor-classes').textContent }; })()"
    ))  # fmt: skip


def test_panel_draws_the_monitor_against_the_card(
    served: tuple[str, dict[str, Any]], browser: Browser, tmp_path: Path
) -> None:
    url, calibration = served
    page = browser.page
    page.goto(url + "/")
    browser.wait_for("$('model').value === 'cifar10_cnn'")
    page.click("#tab-monitor")
    shown = panel(browser, "cifar10_cnn")
    report = monitor(url, "cifar10_cnn")
    labelled = report["labelled"]

    assert f"{STREAM} predictions in the last 1 hour" in shown["title"]
    names = report["class_names"]
    assert shown["class_bars"] == shown["class_references"] == len(names) == 10
    assert [label for label in shown["class_labels"] if label in names] == names
    assert shown["bins"] == shown["bin_references"] == quality.BINS
    # Live accuracy as the monitor counts it, with its Wilson interval and the card's figure.
    assert labelled["n"] == LABELLED
    low, high = labelled["interval"]
    text = shown["accuracy_text"]
    assert f"{pct(labelled['accuracy'])} (95% interval {pct(low)}-{pct(high)}" in text
    assert f"{labelled['correct']} right of {LABELLED} labelled" in text
    metrics = calibration["metrics"]
    q50, q30 = metrics["test_accuracy_jpeg_q50"], metrics["test_accuracy_jpeg_q30"]
    card_text = f"the card's test accuracy {pct(labelled['card_accuracy'])} (JPEG q50 {pct(q50)}"
    assert f"{card_text}, q30 {pct(q30)})" in text
    assert shown["accuracy"] == ("below" if high < labelled["card_accuracy"] else "ok")
    # Clean test images: under the threshold, not drifting.
    assert report["drift"]["drifting"] is False and report["drift"]["score"] < 0.1
    assert shown["drift"] == "steady"
    assert f"score {report['drift']['score']:.3f}" in shown["drift_text"]
    assert shown["meter"] == ["score"]
    # The calibration diagram: one point per non-empty bin (card and live), the diagonal, T, ECE.
    assert shown["card_points"] == sum(1 for b in calibration["reliability"] if b["count"])
    assert shown["live_points"] == sum(1 for b in labelled["reliability"] if b["count"])
    assert shown["diagonal"] == 1 and shown["coverage_rows"] == len(calibration["coverage"])
    assert "T = 1.000" in shown["calibration"]
    assert f"{pct(calibration['ece_before'])} before" in shown["calibration"]
    page.screenshot(path=tmp_path / "explorer-monitor.png", full_page=True)
    keep(tmp_path / "explorer-monitor.png")

    # The same images with red and blue swapped: drifting, no feedback, no calibration block.
    page.select_option("#model", "shifted")
    shifted = panel(browser, "shifted")
    assert monitor(url, "shifted")["drift"]["drifting"] is True
    assert shifted["drift"] == "drifting" and shifted["accuracy"] == "empty"
    assert shifted["meter"] == ["score drifting"]
    assert shifted["class_bars"] == shifted["class_references"] == 10
    assert "no calibration" in shifted["calibration"] and shifted["card_points"] == 0

    # A card from before issue 27: no reference, said so; bars for what was served only.
    page.select_option("#model", "tiny")
    tiny = panel(browser, "tiny")
    assert tiny["drift"] == "no-reference" and tiny["class_references"] == 0
    assert "no reference on this card" in tiny["legend"]
    assert tiny["class_bars"] == len(monitor(url, "tiny")["class_names"])

    # Refresh reads the log again (no polling: nothing changes until asked).
    page.select_option("#model", "cifar10_cnn")
    panel(browser, "cifar10_cnn")
    classify(url, "cifar10_cnn", sample(BATCH, 1)[0], "more")
    settled(url, "cifar10_cnn", STREAM + BATCH)

    def refreshed() -> bool:
        page.click("#monitor-refresh")
        return f"{STREAM + BATCH} predictions" in panel(browser, "cifar10_cnn")["title"]

    wait_until(refreshed, 30, "the refreshed count", 0.5)

    outside = [u for u in browser.requested if not u.startswith((url, "blob:", "data:"))]
    assert not outside, json.dumps(outside)
    assert not unexpected(browser.errors), browser.errors


def test_panel_says_the_log_is_off(tmp_path: Path, browser: Browser) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    settings = make_settings(repo, prediction_log=False)
    with running_server(settings, grpc=False) as running:
        answer = httpx.get(f"{running.url}/v1/models/tiny/monitor", timeout=30)
        assert answer.status_code == 503
        browser.page.goto(running.url + "/")
        browser.wait_for("$('model').value === 'tiny'")
        browser.page.click("#tab-monitor")
        message = browser.wait_for("!$('monitor-error').hidden && $('monitor-error').textContent")
    assert message == f"No monitor for tiny: {answer.json()['error']}"
    assert browser.page.evaluate("$('monitor-body').hidden") is True
    # The 503 itself is the one console error of the panel (the browser logs failed fetches).
    assert not unexpected(browser.errors, "503 (Service Unavailable) http"), browser.errors
