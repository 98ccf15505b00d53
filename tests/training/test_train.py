"""Short real training runs on images the tests make."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from service.core.errors import InvalidConfig
from tests.support.training_inputs import TINY_94, class_images
from training.architectures import ARCHITECTURES
from training.config import TrainConfig
from training.data import Split, train_val_split
from training.distributed import ALONE
from training.evaluation import confident_mistakes, evaluate, evaluate_logits
from training.model import Classifier
from training.optim import build_optimizer, build_schedule, weight_average
from training.run_state import start_training
from training.train import train_epoch, train_model

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


def test_keep_last_keeps_the_final_epoch_whatever_validation_says(tmp_path: Path) -> None:
    fit, val = _data()
    config = TrainConfig(epochs=3, batch_size=32, val_size=60, threads=1, lr=3e-2, keep="last")
    lines: list[str] = []
    result = train_model(config, fit, val, log=lines.append, checkpoint=tmp_path / "last.pt")
    assert result.best_epoch == 3 and lines[-1].startswith("Last epoch kept: 3")
    final = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)


def test_same_seed_gives_same_weights() -> None:
    fit, val = _data(10)
    config = TrainConfig(epochs=1, val_size=60, threads=1)
    a = train_model(config, fit, val, log=lambda line: None).model.state_dict()
    b = train_model(config, fit, val, log=lambda line: None).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


class _Recorder(torch.nn.Module):
    """The model, keeping a copy of every batch it is given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        return cast(torch.Tensor, self.model(x))


def test_an_epoch_trains_on_the_seeded_order_batch_by_batch() -> None:
    fit, _ = _data(10)
    config = TrainConfig(epochs=1, batch_size=16, val_size=60, threads=1)
    run = start_training(config, fit, torch.device("cpu"), ALONE)
    images, labels = torch.from_numpy(fit.images), torch.from_numpy(fit.labels)
    recorder = _Recorder(run.model)
    train_epoch(run, recorder, images, labels, 1, ALONE)
    order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(config.seed))
    expected = images[order].split(config.batch_size)
    assert len(recorder.batches) == len(expected) == 3  # 40 images: 16, 16 and 8
    for seen, batch in zip(recorder.batches, expected, strict=True):
        assert torch.equal(seen, batch)


def test_log_lines_look_like_keras() -> None:
    fit, val = _data(10)
    lines: list[str] = []
    train_model(TrainConfig(epochs=1, val_size=60, threads=1), fit, val, log=lines.append)
    assert lines[0].startswith("Epoch 1/1 - ")
    for key in ("loss:", "accuracy:", "val_loss:", "val_accuracy:"):
        assert key in lines[0]
    assert np.isfinite(float(lines[0].split("val_loss: ")[1].split()[0]))


def test_most_confident_mistakes_are_the_wrong_answers_most_sure_first() -> None:
    labels = np.array([0, 1, 2, 3])
    logits = np.zeros((4, 10), dtype=np.float32)
    logits[0, 0] = 9.0  # right
    logits[1, 5] = 2.0  # wrong, unsure
    logits[2, 7] = 8.0  # wrong, sure
    logits[3, 3] = 1.0  # right
    mistakes = confident_mistakes(logits, labels)
    assert [m["index"] for m in mistakes] == [2, 1]
    assert mistakes[0]["true"] == "bird" and mistakes[0]["predicted"] == "horse"
    assert mistakes[0]["confidence"] > mistakes[1]["confidence"] > 0.1
    assert evaluate_logits(logits, labels).mistakes == mistakes
    assert confident_mistakes(logits, labels, n=1) == mistakes[:1]


_SMALL_BN: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 4, "kernel": 3, "bias": False},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "relu"},
    {"type": "flatten"},
    {"type": "dense", "units": 10},
]


def test_weight_average_is_an_exponential_moving_average_of_weights_and_statistics() -> None:
    torch.manual_seed(0)
    model = Classifier(_SMALL_BN, (8, 8, 3))
    ema = weight_average(model, 0.75)
    assert ema is not None
    snapshots = []
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step + 1.0)
        model.train()
        model(torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8))  # moves BN statistics
        ema.update_parameters(model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    averaged = ema.module.state_dict()
    for key in ("net.conv2d.weight", "net.dense.bias", "net.batch_normalization.running_mean"):
        first, second, third = (s[key] for s in snapshots)
        expected = 0.75 * (0.75 * first + 0.25 * second) + 0.25 * third  # the first step copies
        torch.testing.assert_close(averaged[key], expected)
        assert not torch.allclose(averaged[key], third)


def test_weight_average_is_off_at_zero_and_refuses_a_decay_of_one() -> None:
    model = Classifier(_SMALL_BN, (8, 8, 3))
    assert weight_average(model, 0.0) is None
    with pytest.raises(InvalidConfig, match="below 1"):
        weight_average(model, 1.0)


def test_a_run_with_ema_validates_keeps_and_checkpoints_the_averaged_weights(
    tmp_path: Path,
) -> None:
    fit, val = _data(10)
    config = TrainConfig(epochs=1, val_size=60, threads=1, ema=0.9)
    result = train_model(config, fit, val, log=lambda line: None, checkpoint=tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    average = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    kept = result.model.state_dict()
    assert kept.keys() == average.keys()
    for key in kept:
        torch.testing.assert_close(kept[key], average[key], rtol=0, atol=0)
    last = state["model"]
    assert all(not torch.equal(kept[k], last[k]) for k in kept if k.endswith("weight"))
    assert evaluate(result.model, val).accuracy == result.history[0]["val_accuracy"]


def test_bn_bias_lr_scale_gives_batch_norm_biases_their_own_rate_and_decay() -> None:
    config = TrainConfig(
        optimizer="sgd", lr=0.2, weight_decay=1e-3, bn_bias_lr_scale=64.0, schedule="onecycle"
    )
    model = Classifier(TINY_94)
    optimizer = build_optimizer(config, model)
    weights, biases = optimizer.param_groups
    norm = model.net[4]
    assert [id(p) for p in biases["params"]] == [id(norm.bias)]
    assert len(weights["params"]) == len(list(model.parameters())) - 1
    assert biases["weight_decay"] == pytest.approx(1e-3 / 64)
    assert weights["weight_decay"] == 1e-3
    schedule = build_schedule(config, optimizer, steps_per_epoch=4)
    assert schedule is not None
    peaks = [group["max_lr"] for group in optimizer.param_groups]
    assert peaks == [0.2, pytest.approx(0.2 * 64)]
    plain = build_optimizer(TrainConfig(optimizer="sgd"), model)
    assert len(plain.param_groups) == 1


def test_linear_schedule_rises_from_a_fifth_to_the_peak_then_falls_and_holds_momentum() -> None:
    config = TrainConfig(
        optimizer="sgd", lr=0.5, momentum=0.85, bn_bias_lr_scale=64.0, schedule="linear", epochs=10
    )
    optimizer = build_optimizer(config, Classifier(TINY_94))
    schedule = build_schedule(config, optimizer, steps_per_epoch=10)  # 100 steps, peak at 23
    assert schedule is not None
    rates, momenta = [], []
    for _ in range(100):
        rates.append([group["lr"] for group in optimizer.param_groups])
        momenta.append({group["momentum"] for group in optimizer.param_groups})
        optimizer.step()
        schedule.step()
    assert rates[0] == [pytest.approx(0.1), pytest.approx(0.1 * 64)]
    assert rates[23] == [pytest.approx(0.5), pytest.approx(0.5 * 64)]
    assert max(r[0] for r in rates) == pytest.approx(0.5)
    assert rates[99][0] == pytest.approx(0.5 * (0.07 + 0.93 / 77))  # one step before the end
    assert all(a[0] < b[0] for a, b in itertools.pairwise(rates[:24]))
    assert all(a[0] > b[0] for a, b in itertools.pairwise(rates[23:]))
    assert momenta == [{0.85}] * 100  # OneCycleLR would have cycled it through 0.95


def test_the_whitening_layer_runs_in_float32_under_bf16_autocast() -> None:
    model = Classifier(TINY_94).eval()
    first = model.net[0]
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert first(torch.rand(2, 3, 32, 32)).dtype == torch.float32
        assert model.net[2](torch.rand(2, 24, 31, 31)).dtype == torch.bfloat16  # the rest: bf16
        logits = model(x)
    assert torch.allclose(logits.float(), model(x), atol=0.05)


def _tiny_94_run(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Classifier:
    monkeypatch.setitem(ARCHITECTURES, "tiny_94", TINY_94)
    fit, val = _data(10)
    config = TrainConfig(
        arch="tiny_94", init="torch", val_size=60, threads=1, batch_size=16, optimizer="sgd",
        lr=0.05, keep="last", **overrides,
    )  # fmt: skip
    return train_model(config, fit, val, log=lambda line: None).model


def test_the_whitening_bias_trains_for_its_epochs_then_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = _tiny_94_run(monkeypatch, epochs=1, whiten_bias_epochs=1)
    two = _tiny_94_run(monkeypatch, epochs=2, whiten_bias_epochs=1)
    never = _tiny_94_run(monkeypatch, epochs=1)
    whiten = [cast(torch.nn.Conv2d, m.net[0]) for m in (one, two, never)]
    bias = [cast(torch.Tensor, conv.bias) for conv in whiten]
    # a constant rate and the same seed: the first epoch is the same in both runs, and the
    # bias that the first epoch trained is where the second epoch leaves it
    assert torch.equal(bias[0], bias[1])
    assert not torch.equal(bias[0], bias[2])
    assert torch.equal(whiten[0].weight, whiten[2].weight)  # the whitening itself stays frozen
    convs = [cast(torch.nn.Conv2d, m.net[2]) for m in (one, two)]
    assert not torch.equal(convs[0].weight, convs[1].weight)  # the rest went on training


def test_every_airbench_option_together_trains_and_resumes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(ARCHITECTURES, "tiny_94", TINY_94)
    fit, val = _data(10)
    config = TrainConfig(
        arch="tiny_94", init="torch", epochs=3, val_size=60, threads=1, batch_size=16,
        optimizer="sgd", lr=0.05, momentum=0.85, weight_decay=1e-3, bn_bias_lr_scale=64,
        label_smoothing=0.2, schedule="onecycle", lookahead_every=2, augment="flip-crop",
        crop_pad=2, flip="alternate", whiten_bias_epochs=1, tta="flip-translate",
        autocast="bf16", keep="last",
    )  # fmt: skip
    whole = train_model(config, fit, val, log=lambda line: None)
    losses = [h["loss"] for h in whole.history]
    assert losses[-1] < losses[0]

    def stop_after_epoch_2(line: str) -> None:
        if line.startswith("Epoch 2/"):
            raise KeyboardInterrupt  # as Ctrl-C right after the epoch's checkpoint

    last = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(config, fit, val, stop_after_epoch_2, checkpoint=last)
    assert torch.load(last, weights_only=True)["lookahead"] is not None
    resumed = train_model(config, fit, val, log=lambda line: None, checkpoint=last, resume=last)
    expected = whole.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
