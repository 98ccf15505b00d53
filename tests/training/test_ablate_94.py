"""scripts/ablate_94.py: each ablation removes its method and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.ablate_94 import ABLATIONS
from training.architectures import CIFAR_94
from training.model import Classifier

ROOT = Path(__file__).resolve().parents[2]


def test_the_architecture_ablations_change_only_their_method() -> None:
    no_dirac = ABLATIONS["no-dirac"][1]
    no_whitening = ABLATIONS["no-whitening"][1]
    assert no_dirac is not None and no_whitening is not None
    assert [x.get("init") for x in no_dirac] == [
        "whiten" if x.get("init") == "whiten" else None for x in CIFAR_94
    ]
    assert no_whitening[0] == {"type": "conv2d", "filters": 24, "kernel": 2}
    assert no_whitening[1:] == CIFAR_94[1:]
    assert CIFAR_94[2]["init"] == "dirac"  # the recipe itself is untouched
    stem = Classifier(no_whitening).net[0]
    assert stem.weight.requires_grad
    assert isinstance(stem, torch.nn.Conv2d)


def _ablate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/ablate_94.py"), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, check=False,
    )  # fmt: skip


def test_unknown_ablations_and_missing_recipes_are_refused(tmp_path: Path) -> None:
    assert "unknown ablation" in _ablate("no-such", "--", cwd=tmp_path).stderr
    assert "usage" in _ablate("no-dirac", cwd=tmp_path).stderr


@pytest.mark.slow
def test_an_ablation_trains_its_variant_and_publishes_nothing(
    image_folder: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    result = _ablate(
        "no-whitening", "--", "--data", image_folder, "--cache-dir", tmp_path / "cache",
        "--arch", "cifar_94", "--init", "torch", "--epochs", "1", "--batch-size", "16",
        "--optimizer", "sgd", "--lr", "0.05", "--whiten-bias-epochs", "3", "--val-size", "10",
        "--threads", "1", "--runs-dir", runs, "--repository", tmp_path / "models",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ablation no-whitening: --whiten-bias-epochs 0 --arch cifar_94_no_whitening" in (
        result.stdout
    )
    assert not (tmp_path / "models").exists()
    (run,) = runs.iterdir()
    assert (run / "model.onnx").stat().st_size > 0
    assert len(json.loads((run / "history.json").read_text())) == 1
