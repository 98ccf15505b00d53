"""The optimizer and what moves with it: parameter groups (batch-norm biases at their own
rate), Adam or Nesterov SGD, the one-cycle schedule, the weights' moving average, and the
whitening layer's briefly trained bias."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from service.core.errors import InvalidConfig
from training.architectures import ARCHITECTURES
from training.config import TrainConfig
from training.model import Classifier


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights and buffers, updated after every step.

    Averaging the last few hundred steps smooths out the noise of the final small-rate steps;
    the batch-norm statistics are averaged with the weights so that they match them.
    """
    if decay <= 0:
        return None
    if decay >= 1:
        raise InvalidConfig(f"--ema {decay}: the decay must be below 1 (0 turns the average off)")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def whitening_bias(model: Classifier, config: TrainConfig) -> torch.nn.Parameter | None:
    """The bias of a frozen whitening layer, made trainable for ``--whiten-bias-epochs``.

    Its gradient is dropped after those epochs rather than switched off, so DDP, which fixes
    the parameters it reduces when it wraps the model, sees the same set throughout.
    """
    if config.whiten_bias_epochs <= 0:
        return None
    layers = ARCHITECTURES[config.arch]
    first = model.net[0]
    conv = first if isinstance(first, torch.nn.Conv2d) else None
    if not layers or layers[0].get("init") != "whiten" or conv is None or conv.bias is None:
        raise InvalidConfig(
            f"--whiten-bias-epochs: {config.arch} has no whitening first layer with a bias"
        )
    bias = conv.bias
    assert isinstance(bias, torch.nn.Parameter)
    bias.requires_grad_(True)
    return bias


def parameter_groups(config: TrainConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """One group, or two with ``--bn-bias-lr-scale``: batch-norm biases at ``lr`` times the
    scale and weight decay divided by it (the decay per step, lr x decay, stays the same).

    airbench raises the biases' rate 64-fold: with no learned scale they set each channel's
    threshold, which at the small rate of the weights would barely move in 10 epochs.
    """
    if config.bn_bias_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    biases = {id(m.bias) for m in model.modules() if isinstance(m, norms) and m.bias is not None}
    scale = config.bn_bias_lr_scale
    return [
        {"params": [p for p in model.parameters() if id(p) not in biases]},
        {
            "params": [p for p in model.parameters() if id(p) in biases],
            "lr": config.lr * scale,
            "weight_decay": config.weight_decay / scale,
        },
    ]


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (the lecture's) or SGD with (Nesterov) momentum; weight decay on either.

    Both fused: one kernel updates every parameter, the same arithmetic as the per-tensor loop
    in a third of its time here (the optimizer was 9-13% of a lecture step; docs/benchmarks.md).
    """
    groups = parameter_groups(config, model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
            fused=True,
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def build_schedule(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """None for a constant rate; ``onecycle`` or ``linear``, both stepped once per batch."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: linear_warmup_factor(step, total)
        )
    if config.schedule != "onecycle":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],  # each group's own peak
        total_steps=total,
        pct_start=0.25,
        anneal_strategy="linear",
    )


def linear_warmup_factor(
    step: int, total: int, start: float = 0.2, peak_at: float = 0.23, end: float = 0.07
) -> float:
    """airbench's schedule as a multiple of each group's ``lr``: ``start`` rising linearly to 1
    at ``peak_at`` of the steps, then falling linearly to ``end`` at the last step.

    Unlike ``OneCycleLR`` it leaves momentum alone: PyTorch's one-cycle raises momentum to 0.95
    at both ends, which triples the effective step ``lr / (1 - momentum)`` of a 0.85 recipe.
    """
    warmup = int(total * peak_at)
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    return 1.0 + (end - 1.0) * min(1.0, (step - warmup) / max(1, total - warmup))
