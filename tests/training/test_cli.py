"""The training CLI end to end on a tiny run, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.core.card import read_card


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.slow
def test_train_evaluate_and_summary_end_to_end(image_folder: Path, tmp_path: Path) -> None:
    repo, runs = tmp_path / "models", tmp_path / "runs"
    common: list[str | Path] = ["--data", image_folder, "--cache-dir", tmp_path / "cache"]
    result = _cli(
        "train", *common, "--epochs", "2", "--val-size", "10", "--threads", "1",
        "--repository", repo, "--runs-dir", runs, "--name", "tiny",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Epoch 2/2" in result.stdout and "Published" in result.stdout
    card = read_card(repo / "tiny" / "1")
    assert card.layer_table["total_params"] == 122_570
    assert len(card.training["history"]) == 2
    assert card.dataset["n_train"] == 30 and card.dataset["n_test"] == 20
    assert card.metrics["parity"]["passed"] is True
    # Every export calibrates: T on the run's 10 validation images, the diagram published beside.
    assert card.calibration["n_fit"] == 10 and card.reference["n"] == 20
    assert (repo / "tiny" / "1" / card.calibration["reliability_diagram"]).stat().st_size > 0
    assert "test_accuracy_jpeg_q50" in card.metrics
    (run_dir,) = runs.iterdir()
    assert card.metrics["most_confident_mistakes"][0]["index"] < 20
    files = ("history.json", "curves.png", "confusion.png", "mistakes.png", "checkpoint.pt")
    for name in (*files, "model.onnx"):
        assert (run_dir / name).stat().st_size > 0

    evaluated = _cli(
        "evaluate", "--model", repo / "tiny" / "1", *common, "--mistakes", tmp_path / "m.png",
        cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["images"] == 20
    assert report["accuracy"] == card.metrics["test_accuracy"]
    # 20 test images: every mistake is listed, by torch (the card) and onnxruntime alike
    assert {m["index"] for m in report["most_confident_mistakes"]} == {
        m["index"] for m in card.metrics["most_confident_mistakes"]
    }
    assert (tmp_path / "m.png").stat().st_size > 0

    exported = _cli(
        "export", "--checkpoint", run_dir / "checkpoint.pt", *common,
        "--repository", repo, "--name", "tiny",
        cwd=tmp_path,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert read_card(repo / "tiny" / "2").metrics["test_accuracy"] == card.metrics["test_accuracy"]

    quantize: list[str | Path] = [
        "quantize", "--model", repo / "tiny" / "1", *common, "--calibration-images", "16",
        "--repository", repo, "--name", "tiny_int8", "--runs-dir", runs,
    ]  # fmt: skip
    refused = _cli(*quantize, "--max-drop", "-1", cwd=tmp_path)  # no graph can gain accuracy
    assert refused.returncode == 3, refused.stderr
    assert "nothing published" in refused.stderr and not (repo / "tiny_int8").exists()
    quantized = _cli(*quantize, "--max-drop", "1", cwd=tmp_path)
    assert quantized.returncode == 0, quantized.stderr
    int8 = read_card(repo / "tiny_int8" / "1")
    assert int8.quantization["source"]["sha256"] == card.sha256 != int8.sha256
    assert int8.quantization["calibration"]["images"] == 16
    assert (
        int8.calibration["n_fit"] == 10 and (repo / "tiny_int8" / "1" / "reliability.png").is_file()
    )

    summary = _cli("summary", cwd=tmp_path)
    assert "Total params: 122,570" in summary.stdout


def test_bad_data_fails_clearly_and_publishes_nothing(image_folder: Path, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(image_folder / "train" / "cat" / "huge.png")
    result = _cli(
        "train", "--data", image_folder, "--epochs", "1", "--val-size", "10",
        "--cache-dir", tmp_path / "cache", "--repository", tmp_path / "models",
        "--runs-dir", tmp_path / "runs",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "huge.png" in result.stderr and "64x64" in result.stderr
    assert not (tmp_path / "models").exists()
