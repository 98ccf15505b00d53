"""The retrain job: the quality gate, rejected candidates kept aside, and interruption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.core.card import MODEL_FILE, read_card, sha256_file
from tests.support.feedback_log import LogRow, write_log
from tests.support.training_inputs import class_images
from training.publish import versions
from training.retrain import REJECTED_DIR, Comparison, compare_correct, quality_gate


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


def test_paired_standard_error_counts_only_the_disagreements() -> None:
    candidate = np.array([True] * 80 + [False] * 20)
    served = np.array([True] * 70 + [False] * 10 + [True] * 10 + [False] * 10)
    c = compare_correct(candidate, served)
    assert (c.candidate_only, c.served_only) == (10, 10)
    assert c.difference == 0.0
    assert c.standard_error == pytest.approx(np.sqrt(20) / 100)
    assert compare_correct(served, served).standard_error == 0.0


def _feedback(n: int, candidate: float, served: float) -> Comparison:
    """A held-out comparison where the candidate and the served model disagree fully."""
    right, wrong = round(n * candidate), round(n * served)
    return Comparison(n, candidate, served, right, wrong)


def test_gate_refuses_a_candidate_worse_on_held_out_feedback_beyond_the_noise() -> None:
    worse = _feedback(400, 0.55, 0.70)  # -0.15 against about 0.05 of noise
    gate = quality_gate(0.70, 0.70, min_accuracy=0.5, max_regression=0.01, feedback=worse)
    assert not gate.passed
    assert "held-out feedback (400 images)" in gate.reason
    assert gate.feedback is not None and gate.feedback["verdict"] == "worse beyond the noise"


def test_gate_passes_a_feedback_difference_inside_the_noise() -> None:
    close = _feedback(100, 0.66, 0.70)  # -0.04: 1.96 SE of 0.136 disagreements is about 0.22
    gate = quality_gate(0.70, 0.70, min_accuracy=0.5, max_regression=0.01, feedback=close)
    assert gate.passed, gate.reason
    assert gate.feedback is not None and gate.feedback["verdict"] == "not worse beyond the noise"


def test_a_small_held_out_set_blocks_when_feedback_was_trained_on_and_else_decides_nothing() -> (
    None
):
    """A labeller who kept its 20,000 images out of the held-out set had the gate publish a
    backdoored model: "held-out feedback (0 images) ... too small to judge"."""
    tiny = _feedback(20, 0.0, 1.0)
    gate = quality_gate(0.70, 0.70, min_accuracy=0.5, max_regression=0.01, feedback=tiny)
    assert gate.passed
    assert "too small to judge" in gate.reason
    assert gate.feedback is not None and gate.feedback["verdict"].startswith("too small")
    for held_out in (_feedback(0, 0.0, 0.0), _feedback(29, 1.0, 0.0)):  # even a better one
        gate = quality_gate(
            0.70, 0.70, min_accuracy=0.5, max_regression=0.01, feedback=held_out,
            feedback_trained=20_000,
        )  # fmt: skip
        assert not gate.passed
        assert "under the minimum of 30 held-out images" in gate.reason
        assert "20000 feedback images trained on" in gate.reason
    waived = quality_gate(0.70, 0.70, min_accuracy=0.5, max_regression=0.01,
                          feedback=tiny, feedback_trained=20_000, min_holdout=0)  # fmt: skip
    assert not waived.passed and "worse by more than" in waived.reason  # judged, and worse


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


def test_a_missing_feedback_database_stops_the_job_before_training(
    image_folder: Path, tmp_path: Path
) -> None:
    code, _, err = _finish(_retrain(image_folder, tmp_path, "--feedback", str(tmp_path / "x.db")))
    assert code == 1
    assert "no such prediction log" in err and "Epoch" not in err
    assert not (tmp_path / "x.db").exists()


def test_a_hold_out_key_that_cannot_be_made_stops_the_job_with_what_to_do(
    image_folder: Path, tmp_path: Path
) -> None:
    """A repository the retrain cannot write its key in ended the job in an OSError traceback."""
    log = write_log(tmp_path / "predictions.sqlite3", [("net", None, 1)])
    (tmp_path / "models").write_text("")  # the key's folder cannot be made
    code, _, err = _finish(_retrain(image_folder, tmp_path, "--feedback", str(log)))
    assert code == 1 and "Traceback" not in err and "Epoch" not in err
    assert "cannot make or read the feedback hold-out key" in err and "--feedback-key" in err


@pytest.mark.slow
def test_retrain_on_feedback_trains_on_it_and_judges_on_the_held_out_share(
    image_folder: Path, tmp_path: Path
) -> None:
    code, _, err = _finish(_retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0"))
    assert code == 0, err  # version 1: the served model to beat
    images, labels = class_images(8, seed=7)  # 80 labelled, captured images of another draw
    rows = [("net", im, int(y)) for im, y in zip(images, labels, strict=True)]
    log = write_log(tmp_path / "predictions.sqlite3", rows)
    code, out, err = _finish(
        _retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0",
                 "--max-regression", "1", "--feedback", str(log), "--min-holdout", "5",
                 "--jpeg-p", "0.5")
    )  # fmt: skip
    assert code == 0, err
    assert "Test split, served version 1" in out and "Held-out feedback (" in out
    card = read_card(tmp_path / "models" / "net" / "2")
    summary = card.training["feedback"]
    assert summary["unique_images"] == 80 and summary["train"] + summary["holdout"] == 80
    assert card.dataset["n_train"] == 40 - 10 + summary["train"]  # fit + feedback
    gate = card.metrics["quality_gate"]
    assert gate["feedback"]["images"] == summary["holdout"]
    assert gate["feedback"]["verdict"] == "not worse beyond the noise"
    assert gate["test"]["images"] == 20
    assert card.training["config"]["jpeg_p"] == 0.5  # trained on JPEG copies too


def test_retrain_trains_on_admins_labels_only_and_a_small_held_out_set_blocks(
    image_folder: Path, tmp_path: Path
) -> None:
    code, _, err = _finish(_retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0"))
    assert code == 0, err  # version 1: the served model to beat
    admins, labels = class_images(4, seed=7)  # 40 an admin labelled
    flood, _ = class_images(6, seed=8)  # 60 labelled "airplane" through FEEDBACK_OPEN
    rows: list[LogRow] = [("net", im, int(y)) for im, y in zip(admins, labels, strict=True)]
    rows += [("net", im, 0, "open") for im in flood]
    log = str(write_log(tmp_path / "predictions.sqlite3", rows))
    flags = ("--epochs", "1", "--min-accuracy", "0", "--max-regression", "1", "--feedback", log)
    code, out, err = _finish(_retrain(image_folder, tmp_path, *flags))  # 40 x 0.2: under 30
    assert code == 3, err
    assert "Feedback labels: admins' only; 60 rows labelled by others" in out
    assert "under the minimum of 30 held-out images" in err and "nothing published" in err
    assert versions(tmp_path / "models" / "net") == [1]
    code, out, err = _finish(_retrain(image_folder, tmp_path, *flags, "--min-holdout", "0"))
    assert code == 0, err
    summary = read_card(tmp_path / "models" / "net" / "2").training["feedback"]
    assert summary["unique_images"] == 40 and summary["not_admin_labels"] == 60
    assert summary["train"] + summary["holdout"] == 40 and not summary["open_labels"]
    assert (tmp_path / "models" / ".feedback-holdout.key").exists()  # the split's secret


def test_an_optional_feedback_file_that_is_not_there_yet_means_no_feedback(
    image_folder: Path, tmp_path: Path
) -> None:
    code, out, err = _finish(
        _retrain(image_folder, tmp_path, "--epochs", "1", "--min-accuracy", "0",
                 "--feedback", str(tmp_path / "later.sqlite3"), "--feedback-optional")
    )  # fmt: skip
    assert code == 0, err
    assert "training without feedback" in out
    assert "feedback" not in read_card(tmp_path / "models" / "net" / "1").training
