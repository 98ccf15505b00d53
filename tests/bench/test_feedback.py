"""The whole loop on real parts: JPEG traffic through a real server with capture on, its labels
posted as feedback (``python -m bench feedback send``), then a retrain on that log judged by the
gate against the served version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.card import read_card
from tests.support.models import lecture_graph, write_model
from tests.support.servers import ROOT
from tests.support.training_inputs import write_image_folder


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_traffic_and_its_labels_reach_a_retrain_that_judges_on_them(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "cifar", train_per_class=4, test_per_class=8)
    repository = tmp_path / "models"
    write_model(repository, "cifar10_cnn", 1, graph=lecture_graph())
    log_dir, cache = tmp_path / "log", str(tmp_path / "cache")
    sent = _run(
        "bench", "feedback", "send", "--data", str(data), "--cache-dir", cache,
        "--repository", str(repository), "--data-dir", str(log_dir),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["images"] == 40  # the odd half of 80 test images

    retrained = _run(
        "training", "retrain", "--data", str(data), "--cache-dir", cache,
        "--repository", str(repository), "--runs-dir", str(tmp_path / "runs"),
        "--val-size", "10", "--threads", "1", "--epochs", "1", "--min-accuracy", "0",
        "--max-regression", "1", "--min-holdout", "1",
        "--feedback", str(log_dir / "predictions.sqlite3"),
    )  # fmt: skip
    assert retrained.returncode == 0, retrained.stderr
    assert "Held-out feedback (" in retrained.stdout
    card = read_card(repository / "cifar10_cnn" / "2")
    feedback = card.training["feedback"]
    assert feedback["rows"] == 40 and feedback["unique_images"] == 40
    assert card.metrics["quality_gate"]["feedback"]["images"] == feedback["holdout"]
