"""A run in progress: the model, optimizer, schedule, averages and random generators that the
loop carries from step to step; how a new run starts, how ``--resume`` restores one from
``last.pt``, and what ``last.pt`` saves."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.optim.swa_utils import AveragedModel

from service.core.errors import InvalidConfig
from training.allocator import keep_freed_pages
from training.architectures import ARCHITECTURES
from training.augment import Augment, augment_options
from training.checkpoint import ResumePoint
from training.config import TrainConfig
from training.data import Split
from training.distributed import World
from training.lookahead import Lookahead
from training.model import Classifier, build_classifier, init_from_data
from training.optim import build_optimizer, build_schedule, weight_average, whitening_bias
from training.threads import ThreadChooser, thread_chooser

WHITENING_IMAGES = 5000  # training images whose patch statistics set a whitening layer


@dataclass
class Training:
    """What a run carries from step to step and epoch to epoch (and ``last.pt`` saves)."""

    config: TrainConfig
    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    ema: AveragedModel | None
    lookahead: Lookahead | None
    whiten_bias: torch.nn.Parameter | None
    augment: Augment | None
    generator: torch.Generator  # the epochs' image order: the same on every rank
    augment_rng: torch.Generator  # this rank's crops and flips
    steps: int  # optimizer steps per epoch
    threads: ThreadChooser | None = None  # a lone CPU run's thread count, re-chosen under load
    history: list[dict[str, float]] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, Any] = field(default_factory=dict)
    first_epoch: int = 1

    @property
    def scored(self) -> Classifier:
        """The weights validated, kept and exported: the moving average when there is one."""
        return self.model if self.ema is None else cast(Classifier, self.ema.module)


def start_training(config: TrainConfig, fit: Split, device: torch.device, world: World) -> Training:
    """The model (initialised, on ``device``), optimizer, schedule and generators of a new run."""
    keep_freed_pages()  # each step reuses the last one's pages (training/allocator.py)
    model = build_classifier(config)
    init_from_data(model, ARCHITECTURES[config.arch], fit.images[:WHITENING_IMAGES])
    model = model.to(device)
    optimizer = build_optimizer(config, model)
    steps = math.ceil(len(fit) / config.batch_size)
    augment = augment_options(config.augment, config.crop_pad, config.cutout_size)
    if config.flip == "alternate" and (augment is None or not augment.flip):
        raise InvalidConfig("--flip alternate needs an --augment that flips")
    lookahead = (
        Lookahead(model, config.lookahead_every, config.lookahead_decay)
        if config.lookahead_every > 0
        else None
    )
    return Training(
        config,
        model,
        optimizer,
        build_schedule(config, optimizer, steps),
        weight_average(model, config.ema),
        lookahead,
        whitening_bias(model, config),
        augment,
        torch.Generator().manual_seed(config.seed),
        torch.Generator().manual_seed(config.seed + 1 + world.rank),
        steps,
        thread_chooser(config.threads, device, world.distributed),
        best_state=copy.deepcopy(model.state_dict()),
    )


def resume_training(run: Training, path: Path) -> int:
    """Carry ``run`` on from a ``last.pt``; returns the epochs it had done."""
    point = ResumePoint.load(path)
    run.model.load_state_dict(point.model)
    run.optimizer.load_state_dict(point.optimizer)
    if run.scheduler is not None and point.scheduler is not None:
        run.scheduler.load_state_dict(point.scheduler)
    if run.ema is not None and point.ema is not None:
        run.ema.load_state_dict(point.ema)
    if run.lookahead is not None and point.lookahead is not None:
        run.lookahead.load_state_dict(point.lookahead)
    if point.augment_rng is not None:
        run.augment_rng.set_state(point.augment_rng)
    run.generator.set_state(point.generator)
    torch.set_rng_state(point.torch_rng)
    run.history = point.history
    run.best_accuracy, run.best_epoch, run.best_state = (
        point.best_accuracy,
        point.best_epoch,
        point.best,
    )
    run.first_epoch = point.epoch + 1
    return point.epoch


def resume_point(run: Training, epoch: int, world: World) -> ResumePoint:
    return ResumePoint(
        config=run.config.to_dict(),
        epoch=epoch,
        model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
        ema=run.ema.state_dict() if run.ema is not None else None,
        lookahead=run.lookahead.state_dict() if run.lookahead is not None else None,
        augment_rng=run.augment_rng.get_state(),
        generator=run.generator.get_state(),
        torch_rng=torch.get_rng_state(),
        history=run.history,
        best_accuracy=run.best_accuracy,
        best_epoch=run.best_epoch,
        best=run.best_state,
        world_size=world.size,
    )
