"""The named recipes: each is exactly the flag list the Makefile carried, and flags override it."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from training.__main__ import build_parser, run_config
from training.config import TrainConfig
from training.recipes import CIFAR_94, RECIPES

# The Makefile's LECTURE_FLAGS, BEST_FLAGS and NINETY4_FLAGS before the recipes had names.
MAKEFILE_FLAGS = {
    "lecture": "--autocast bf16",
    "cifar_bn": "--arch cifar_bn --epochs 40 --batch-size 128 --optimizer sgd --lr 0.1 "
    "--momentum 0.9 --weight-decay 5e-4 --label-smoothing 0.1 --schedule onecycle "
    "--augment flip-crop --crop-pad 4 --autocast bf16 --val-size 1000 --ema 0.999 --keep last",
    "cifar_94": "--arch cifar_94 --init torch --epochs 10 --batch-size 1024 --optimizer sgd "
    "--lr 1.5 --momentum 0.85 --weight-decay 1.33e-3 --bn-bias-lr-scale 64 "
    "--label-smoothing 0.2 --schedule linear --lookahead-every 5 --augment flip-crop "
    "--crop-pad 2 --flip alternate --whiten-bias-epochs 3 --tta flip-translate --autocast bf16 "
    "--val-size 1000 --keep last",
}


def _config(*argv: str) -> TrainConfig:
    return run_config(build_parser().parse_args(["retrain", *argv]))


@pytest.mark.parametrize("name", sorted(MAKEFILE_FLAGS))
def test_each_recipe_is_the_flag_list_it_replaces_field_for_field(name: str) -> None:
    from_flags = _config(*shlex.split(MAKEFILE_FLAGS[name]))
    # as the card stores it: an int where a float was meant would show there
    assert json.dumps(RECIPES[name].to_dict()) == json.dumps(from_flags.to_dict())
    assert _config("--recipe", name) == RECIPES[name]


def test_without_a_recipe_a_run_gets_the_defaults_as_before() -> None:
    assert _config() == TrainConfig()
    assert _config("--epochs", "3") == TrainConfig(epochs=3)


def test_a_flag_overrides_one_field_of_the_recipe_and_nothing_else() -> None:
    config = _config("--recipe", "cifar_94", "--seed", "1", "--lr", "0.5", "--no-nesterov")
    assert config == dataclasses.replace(CIFAR_94, seed=1, lr=0.5, nesterov=False)
    # the flag wins wherever it stands on the line
    assert _config("--lr", "0.5", "--recipe", "cifar_94").lr == 0.5


def test_an_unknown_recipe_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _config("--recipe", "no_such")
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_makefile_and_compose_name_recipes_instead_of_copying_fields() -> None:
    root = Path(__file__).resolve().parents[2]
    fields = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    lines = [
        line
        for name in ("Makefile", "docker-compose.yml", "Dockerfile")
        for line in (root / name).read_text().replace("\\\n", " ").splitlines()
        if re.search(r"-m[\", ]+training", line)
    ]
    assert any("--recipe cifar_94" in line for line in lines)
    copied = {flag for line in lines for flag in re.findall(r"--[a-z-]+", line)} & fields
    assert not copied
