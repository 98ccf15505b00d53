"""The charts are real PNG files, drawn from real run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image


def _run_folder(path: Path, accuracies: list[float], test: float) -> Path:
    path.mkdir()
    history = [
        {"epoch": i + 1, "val_accuracy": a, "seconds": 60.0 + i} for i, a in enumerate(accuracies)
    ]
    (path / "history.json").write_text(json.dumps(history))
    (path / "metrics.json").write_text(json.dumps({"accuracy": test}))
    return path


def test_plot_runs_draws_accuracy_against_wall_time_for_every_run(tmp_path: Path) -> None:
    a = _run_folder(tmp_path / "a", [0.5, 0.7, 0.8], 0.81)
    b = _run_folder(tmp_path / "b", [0.6, 0.9], 0.88)
    out = tmp_path / "chart.png"
    result = subprocess.run(
        [sys.executable, "-m", "training", "plot-runs", "--out", str(out), f"A={a}", f"B={b}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (800, 500)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 10  # lines and text, not a blank canvas


def test_plot_runs_refuses_an_argument_without_a_label(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "plot-runs", "--out", str(tmp_path / "x.png"), "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "LABEL=RUN_DIR" in result.stderr
