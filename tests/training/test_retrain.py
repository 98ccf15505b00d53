"""The retrain job: the quality gate, rejected candidates kept aside, and interruption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.core.card import MODEL_FILE, read_card, sha256_file
from training.publish import versions
from training.retrain import REJECTED_DIR, quality_gate


def test_gate_refuses_accuracy_below_the_minimum() -> None:
    gate = quality_gate(0.60, None, min_accuracy=0.685, max_regression=0.01)
    assert not gate.passed
    assert "below the minimum" in gate.reason


def test_gate_refuses_a_regression_beyond_the_tolerance() -> None:
    gate = quality_gate(0.70, 0.72, min_accuracy=0.5, max_regression=0.01, served_version=3)
    assert not gate.passed
    assert "served version 3" in gate.reason


def test_gate_passes_within_the_tolerance_and_on_an_empty_repository() -> None:
    assert quality_gate(0.715, 0.72, min_accuracy=0.5, max_regression=0.01).passed
    assert quality_gate(0.70, None, min_accuracy=0.5, max_regression=0.0).passed


def _retrain(data: Path, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    args = [
        sys.executable, "-m", "training", "retrain", "--data", str(data),
        "--cache-dir", str(tmp / "cache"), "--repository", str(tmp / "models"),
        "--runs-dir", str(tmp / "runs"), "--name", "net", "--val-size", "10", "--threads", "1",
        *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _assert_only_whole_versions(model_dir: Path) -> None:
    """Every version the service could see is complete (a SIGKILL may leave a hidden .tmp-*)."""
    for version in versions(model_dir):
        folder = model_dir / str(version)
        assert read_card(folder).sha256 == sha256_file(folder / MODEL_FILE)


@pytest.mark.slow
def test_rejected_candidate_is_kept_aside_and_passing_one_is_published(
    image_folder: Path, tmp_path: Path
) -> None:
    code, _, err = _finish(
        _retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "1.01")
    )
    assert code == 3, err
    assert "below the minimum" in err and "nothing published" in err
    assert versions(tmp_path / "models" / "net") == []
    (kept,) = (tmp_path / "models" / REJECTED_DIR).iterdir()
    assert (kept / MODEL_FILE).exists()
    assert "below the minimum" in (kept / "REJECTED.txt").read_text()
    assert json.loads((kept / "card.json").read_text())["quality_gate"]["passed"] is False

    code, out, err = _finish(
        _retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0")
    )
    assert code == 0, err
    assert "Quality gate passed" in out and "no version is served yet" in out
    assert versions(tmp_path / "models" / "net") == [1]
    gate = read_card(tmp_path / "models" / "net" / "1").metrics["quality_gate"]
    assert gate["passed"] is True

    # Demanding a gain of 0.5 over the served version on the same images must refuse.
    code, _, err = _finish(
        _retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0",
                 "--max-regression", "-0.5")
    )  # fmt: skip
    assert code == 3, err
    assert "served version 1" in err
    assert versions(tmp_path / "models" / "net") == [1]


def test_sigterm_mid_job_leaves_the_repository_as_it_was(
    image_folder: Path, tmp_path: Path
) -> None:
    process = _retrain(image_folder, tmp_path, "--epochs", "500", "--min-accuracy", "0")
    time.sleep(6)  # well into training: torch imported, data read
    process.send_signal(signal.SIGTERM)
    code, _, err = _finish(process)
    assert code == 130, err
    assert "repository is unchanged" in err
    model_dir = tmp_path / "models" / "net"
    assert not model_dir.exists() or (versions(model_dir) == [] and not list(model_dir.iterdir()))


@pytest.mark.parametrize("delay_s", [4.0, 6.5])
def test_sigkill_at_any_moment_leaves_no_partial_version(
    image_folder: Path, tmp_path: Path, delay_s: float
) -> None:
    process = _retrain(image_folder, tmp_path, "--epochs", "3", "--min-accuracy", "0")
    time.sleep(delay_s)
    process.kill()
    process.communicate(timeout=60)
    _assert_only_whole_versions(tmp_path / "models" / "net")
