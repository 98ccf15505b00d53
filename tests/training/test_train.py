"""Short real training runs on images the tests make."""

from __future__ import annotations

import numpy as np
import torch

from tests.training.conftest import class_images
from training.config import TrainConfig
from training.data import Split, train_val_split
from training.train import evaluate, train_model

TINY = TrainConfig(epochs=3, batch_size=32, val_size=60, threads=1)


def _data(n_per_class: int = 30) -> tuple[Split, Split]:
    images, labels = class_images(n_per_class, seed=0)
    return train_val_split(Split(images, labels), TINY.val_size, TINY.seed)


def test_short_run_lowers_the_loss() -> None:
    fit, val = _data()
    result = train_model(TINY, fit, val, log=lambda line: None)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_accuracy"] > 0.2  # chance is 0.1


def test_best_validation_epoch_weights_are_kept() -> None:
    fit, val = _data()
    config = TrainConfig(
        epochs=4, batch_size=32, val_size=60, threads=1, lr=3e-2
    )  # noisy on purpose
    result = train_model(config, fit, val, log=lambda line: None)
    best = max(h["val_accuracy"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_accuracy"] == best
    assert evaluate(result.model, val).accuracy == best


def test_same_seed_gives_same_weights() -> None:
    fit, val = _data(10)
    config = TrainConfig(epochs=1, val_size=60, threads=1)
    a = train_model(config, fit, val, log=lambda line: None).model.state_dict()
    b = train_model(config, fit, val, log=lambda line: None).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_log_lines_look_like_keras() -> None:
    fit, val = _data(10)
    lines: list[str] = []
    train_model(TrainConfig(epochs=1, val_size=60, threads=1), fit, val, log=lines.append)
    assert lines[0].startswith("Epoch 1/1 - ")
    for key in ("loss:", "accuracy:", "val_loss:", "val_accuracy:"):
        assert key in lines[0]
    assert np.isfinite(float(lines[0].split("val_loss: ")[1].split()[0]))
