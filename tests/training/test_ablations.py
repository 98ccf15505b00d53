"""``python -m training ablate``: each ablation is the cifar_94 recipe without its method."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from training.__main__ import build_parser, main
from training.architectures import ARCHITECTURES, CIFAR_94
from training.experiments import ablation_config
from training.model import Classifier
from training.recipes import ABLATIONS, ablated
from training.recipes import CIFAR_94 as RECIPE


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_changes_only_its_own_fields(name: str) -> None:
    variant = ablated(RECIPE, name)
    changed = {
        f.name
        for f in dataclasses.fields(variant)
        if getattr(variant, f.name) != getattr(RECIPE, f.name)
    }
    assert changed == set(ABLATIONS[name].fields)
    assert variant.arch in ARCHITECTURES


def test_the_architecture_ablations_change_only_their_method() -> None:
    no_dirac = ARCHITECTURES["cifar_94_no_dirac"]
    no_whitening = ARCHITECTURES["cifar_94_no_whitening"]
    assert no_dirac == [
        {k: v for k, v in x.items() if (k, v) != ("init", "dirac")} for x in CIFAR_94
    ]
    assert no_whitening[0] == {"type": "conv2d", "filters": 24, "kernel": 2}
    assert no_whitening[1:] == CIFAR_94[1:]
    assert CIFAR_94[2]["init"] == "dirac"  # the recipe's network is untouched
    stem = Classifier(no_whitening).net[0]
    assert isinstance(stem, torch.nn.Conv2d) and stem.weight.requires_grad


def test_the_ablation_wins_over_a_flag_and_other_flags_apply() -> None:
    args = build_parser().parse_args(
        ["ablate", "no-lookahead", "--lookahead-every", "5", "--seed", "1"]
    )
    assert ablation_config(args) == dataclasses.replace(RECIPE, lookahead_every=0, seed=1)


def test_an_unknown_ablation_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "no-such"])
    assert exit_.value.code == 2 and "invalid choice: 'no-such'" in capsys.readouterr().err


@pytest.mark.slow
def test_an_ablation_trains_its_variant_writes_its_figures_and_publishes_nothing(
    image_folder: Path, tmp_path: Path
) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable, "-m", "training", "ablate", "no-whitening", "--data", image_folder,
            "--cache-dir", tmp_path / "cache", "--epochs", "1", "--batch-size", "16",
            "--lr", "0.05", "--val-size", "10", "--threads", "1", "--runs-dir", runs,
            "--repository", tmp_path / "models", "--results-dir", results,
        ],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ablation no-whitening: --whiten-bias-epochs 0 --arch cifar_94_no_whitening" in (
        result.stdout
    )
    assert not (tmp_path / "models").exists()
    (run,) = runs.iterdir()
    assert run.name.startswith("cifar_94_no_whitening-")
    assert (run / "model.onnx").stat().st_size > 0
    assert len(json.loads((run / "history.json").read_text())) == 1
    record = json.loads((results / "ablate-94-no-whitening-seed0-cifar.json").read_text())
    assert record["command"].startswith("python -m training ablate no-whitening")
    figures = record["results"]
    flags: dict[str, Any] = {"epochs": 1, "batch_size": 16, "lr": 0.05, "val_size": 10}
    config = dataclasses.replace(ablated(RECIPE, "no-whitening"), threads=1, **flags)
    assert figures["config"] == config.to_dict()
    assert 0 <= figures["test_accuracy"] <= 1 and figures["test_images"] == 20
