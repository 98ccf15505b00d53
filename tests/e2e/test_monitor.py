"""The monitor end to end (issue 27): a real server with the SQLite default and the prediction log
on, real CIFAR-10 test images sent, feedback posted with their true labels; the monitor and
/metrics reflect it, and a stream re-encoded at JPEG quality 10 drifts over DRIFT_THRESHOLD while
the same images unshifted stay under it (figures: docs/monitoring.md, "The monitor")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.drift import DATA, reencode, sample
from service.core import quality
from service.settings import Settings
from tests.support.apps import ADMIN, make_settings
from tests.support.monitored_model import add_model_with_reference
from tests.support.servers import running_server, wait_until

pytestmark = pytest.mark.skipif(not (DATA / "test").is_dir(), reason="no data (make data)")

IMAGES = 500  # per stream: the noise floor (0.077) and clean streams' scores sit under 0.1 here
BATCH = 100


def send(http: httpx.Client, model: str, images: np.ndarray) -> list[tuple[str, int, float]]:
    """``images`` in v2 binary requests of BATCH; (request id, top-1, top-1 probability) each."""
    answers = []
    for start in range(0, len(images), BATCH):
        raw = images[start : start + BATCH].tobytes()
        header = json.dumps({
            "inputs": [{"name": "images", "shape": [len(raw) // 3072, 32, 32, 3],
                        "datatype": "UINT8", "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "probabilities"}],
        }).encode()  # fmt: skip
        response = http.post(
            f"/v2/models/{model}/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        p = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        request_id = response.headers["x-request-id"]
        answers += [
            (request_id, int(t), float(m)) for t, m in zip(p.argmax(1), p.max(1), strict=True)
        ]
    return answers


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lecture model twice, both cards with the test split's reference: one model takes the
    clean stream, the other the shifted one, so each has a monitor answer of its own."""
    repo = tmp_path_factory.mktemp("monitor") / "models"
    add_model_with_reference(repo, "clean")
    add_model_with_reference(repo, "shifted")
    return repo


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Settings]]:
    settings = make_settings(
        repo, prediction_log=True, data_dir=tmp_path / "data", monitor_refresh_s=0.2
    )
    with (
        running_server(settings, grpc=False) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
    ):
        yield http, settings


def monitor(http: httpx.Client, model: str) -> dict[str, Any]:
    response = http.get(f"/v1/models/{model}/monitor")
    assert response.status_code == 200, response.text
    return response.json()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of /metrics with ``name`` and exactly ``labels`` (None: absent);
    ``class_`` stands for the label ``class``."""
    wanted = {k.rstrip("_"): v for k, v in labels.items()}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_0-9]+)\{(.*)\} (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if found == wanted:
                return float(match.group(3))
    return None


def test_monitor_and_metrics_follow_traffic_feedback_and_drift(
    server: tuple[httpx.Client, Settings],
) -> None:
    http, settings = server
    images, labels = sample(IMAGES, seed=27)
    answers = send(http, "clean", images)
    send(http, "shifted", reencode(images, 10))
    names = monitor(http, "clean")["class_names"]
    truth = labels.tolist()
    feedback = [
        {"id": answers[i][0], "item": i % BATCH, "label": names[label]}
        for i, label in enumerate(truth)
    ]
    posted = http.post("/v1/feedback", json=feedback, headers=ADMIN)
    assert posted.status_code == 200, posted.text

    def seen() -> bool:
        return monitor(http, "clean")["labelled"]["n"] == IMAGES

    wait_until(seen, 30, "the monitor counting the feedback")  # fmt: skip
    wait_until(lambda: monitor(http, "shifted")["predictions"] == IMAGES, 30, "shifted stream")
    clean, shifted = monitor(http, "clean"), monitor(http, "shifted")

    top1 = [t for _, t, _ in answers]
    assert clean["predictions"] == IMAGES and clean["version"] == 1
    assert clean["predicted_classes"]["counts"] == quality.class_counts(top1, 10)
    assert clean["top1_probability"]["counts"] == quality.histogram(m for _, _, m in answers)
    assert clean["top1_probability"]["bins"] == 10
    right = [t == y for t, y in zip(top1, truth, strict=True)]
    correct = sum(right)
    labelled = clean["labelled"]
    assert (labelled["n"], labelled["correct"]) == (IMAGES, correct)
    assert labelled["accuracy"] == pytest.approx(correct / IMAGES)
    assert labelled["interval"] == pytest.approx(list(quality.wilson_interval(correct, IMAGES)))
    assert labelled["card_accuracy"] == 0.6882  # the shipped lecture card's
    assert labelled["confusion"] == quality.confusion_matrix(zip(truth, top1, strict=True), 10)
    ece = quality.expected_calibration_error([m for _, _, m in answers], right)
    assert labelled["ece"] == pytest.approx(ece, abs=1e-6)
    assert [b["count"] for b in labelled["reliability"]] == clean["top1_probability"]["counts"]

    threshold = settings.drift_threshold
    assert clean["drift"]["threshold"] == threshold
    assert clean["drift"]["score"] < threshold and not clean["drift"]["drifting"]
    assert shifted["drift"]["score"] > threshold and shifted["drift"]["drifting"]
    assert clean["drift"]["noise_floor"] == shifted["drift"]["noise_floor"] > 0
    assert shifted["labelled"]["n"] == 0 and shifted["labelled"]["accuracy"] is None

    def scraped() -> str:
        return http.get("/metrics").text

    def refreshed() -> bool:
        text = scraped()
        accuracy = metric(text, "model_labelled_accuracy", model="clean", version="1")
        return (
            accuracy is not None
            and metric(text, "model_drifting", model="shifted", version="1") == 1
        )

    wait_until(refreshed, 30, "the quality gauges refreshed")  # fmt: skip
    text = scraped()
    for index, name in enumerate(names):
        counted = metric(
            text, "model_predicted_class_total", model="clean", version="1", class_=name
        )
        assert counted == (clean["predicted_classes"]["counts"][index] or None)
    count = metric(text, "model_top1_probability_count", model="clean", version="1")
    assert count == IMAGES
    accuracy = metric(text, "model_labelled_accuracy", model="clean", version="1")
    assert accuracy == pytest.approx(correct / IMAGES)
    assert metric(text, "model_card_accuracy", model="clean", version="1") == 0.6882
    assert metric(text, "model_labelled_predictions", model="clean", version="1") == IMAGES
    assert metric(text, "model_drifting", model="clean", version="1") == 0
    score = metric(text, "model_drift_score", model="shifted", version="1", kind="score")
    assert score == pytest.approx(shifted["drift"]["score"])
