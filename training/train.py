"""The training loop: the lecture's recipe, a Keras-like log, the best validation epoch kept.

python -m training train --data data/cifar10-jpeg
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.augment import alternating_flips, augment_batch
from training.checkpoint import LAST_CHECKPOINT, RUN_CHECKPOINT, ResumePoint, TrainingRun, save_run
from training.config import TrainConfig
from training.data import CLASS_NAMES, Cifar10, Split, train_val_split
from training.distributed import (
    ALONE,
    World,
    all_sum,
    from_main,
    rank_device,
    rank_share,
    threads_per_process,
)
from training.evaluation import evaluate
from training.jpeg import JpegEpochs
from training.model import Classifier
from training.run_state import Training, resume_point, resume_training, start_training

Log = Callable[[str], None]


@dataclass
class TrainResult:
    model: Classifier
    history: list[dict[str, float]]
    best_epoch: int  # 1-based; its weights are the ones in ``model``
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def mixed_precision(config: TrainConfig, device: torch.device) -> torch.autocast:
    """The autocast context of ``--autocast``: bf16 on CPU or CUDA, or a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast == "bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_model(
    config: TrainConfig,
    fit: Split,
    val: Split,
    log: Log = print,
    *,
    world: World = ALONE,
    checkpoint: Path | None = None,
    resume: Path | None = None,
) -> TrainingRun:
    """The recipe: ``config.epochs`` epochs of training, each scored on ``val``; returns the
    weights of the best validation epoch (``--keep best``) or of the last one (``--keep last``).

    Under torchrun every rank runs this: each takes its strided share of every global batch of
    ``config.batch_size`` images (the same seeded permutation on every rank) and DDP averages the
    gradients, so a step sees the same images and gradient as one process would. Rank 0 scores
    the validation split and tells the others, so every rank keeps the same best epoch.
    ``checkpoint``: rank 0 writes everything needed to resume there after each epoch;
    ``resume``: carry on from such a file.
    """
    seed_everything(config.seed)
    torch.set_num_threads(threads_per_process(world, config.threads))
    device = rank_device(world, resolve_device(config.device))
    log = log if world.is_main else _silent
    run = start_training(config, fit, device, world)
    if resume is not None:
        done = resume_training(run, resume)
        log(f"Resuming from {resume}: {done} of {config.epochs} epochs done")
    if world.rank > 0:
        torch.manual_seed(config.seed + world.rank)  # own dropout masks; rank 0 keeps a lone run's
    net = _data_parallel(run.model, device, world)
    images = torch.from_numpy(fit.images).to(device)  # uint8 stays uint8 until the model scales it
    labels = torch.from_numpy(fit.labels).to(device)
    jpeg = JpegEpochs(fit.images, config, run.first_epoch) if config.jpeg_p > 0 else None
    started = time.perf_counter()
    for epoch in range(run.first_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        if jpeg is not None:  # this epoch's JPEG copies, made while the last epoch trained
            images = torch.from_numpy(jpeg.images_for(epoch)).to(device)
        train_loss, train_acc = train_epoch(run, net, images, labels, epoch, world)
        val_loss, val_acc = validate(run, val, world, device)
        seconds = time.perf_counter() - t0
        record_epoch(run, epoch, (train_loss, train_acc, val_loss, val_acc), seconds)
        if checkpoint is not None and world.is_main:
            resume_point(run, epoch, world).save(checkpoint)
        # Logged after the checkpoint: an epoch on the screen is an epoch a resume keeps.
        log(
            f"Epoch {epoch}/{config.epochs} - {seconds:.0f}s - loss: {train_loss:.4f} - "
            f"accuracy: {train_acc:.4f} - val_loss: {val_loss:.4f} - val_accuracy: {val_acc:.4f}"
        )
    if jpeg is not None:
        jpeg.close()
    run.model.load_state_dict(run.best_state)
    run.model.eval()
    which = "Last" if config.keep == "last" else "Best validation"
    log(f"{which} epoch kept: {run.best_epoch} (val_accuracy {run.best_accuracy:.4f})")
    seconds = time.perf_counter() - started
    return TrainingRun(config, run.model, run.history, run.best_epoch, seconds)


def record_epoch(
    run: Training, epoch: int, scores: tuple[float, float, float, float], seconds: float
) -> None:
    """The epoch into the history; its weights kept if best on validation (or if last)."""
    train_loss, train_acc, val_loss, val_acc = scores
    run.history.append(
        {
            "epoch": epoch,
            "loss": train_loss,
            "accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": seconds,
        }
    )
    if val_acc > run.best_accuracy or run.config.keep == "last":
        run.best_accuracy, run.best_epoch = val_acc, epoch
        run.best_state = copy.deepcopy(run.scored.state_dict())


def _data_parallel(model: Classifier, device: torch.device, world: World) -> torch.nn.Module:
    """The module the steps run: DDP around the model in a distributed run (it broadcasts rank
    0's weights, then all-reduces, i.e. averages, the gradients in backward)."""
    if not world.distributed:
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def train_epoch(
    run: Training,
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epoch: int,
    world: World,
) -> tuple[float, float]:
    """One pass over the training images; returns their mean loss and accuracy (all ranks)."""
    config, device = run.config, images.device
    run.model.train()
    order = torch.randperm(len(images), generator=run.generator).to(device)  # same on every rank
    flips = (  # by image, not by batch position: each image alternates across epochs
        alternating_flips(len(images), epoch, config.seed + 2).to(device)
        if config.flip == "alternate"
        else None
    )
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    autocast = mixed_precision(config, device)
    bar = tqdm(
        range(run.steps),
        desc=f"Epoch {epoch}/{config.epochs}",
        unit="step",
        leave=False,
        disable=None if world.is_main else True,
    )
    shown = not bar.disable
    for step in bar:
        if run.threads is not None:
            run.threads.before_step()
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        idx = rank_share(batch, world)
        # index_select copies whole rows: 4 us a batch here, against 60 us for images[idx]
        x, y = images.index_select(0, idx), labels.index_select(0, idx)
        if run.augment is not None:
            flip = None if flips is None else flips[idx]
            x = augment_batch(x, run.augment_rng, run.augment, flip)
        with autocast:
            logits = net(x).float()
        loss, batch_loss = _loss(logits, y, len(batch), config.label_smoothing, world)
        loss_sum += batch_loss
        optimizer_step(run, loss, epoch, (epoch - 1) * run.steps + step + 1)
        correct += (logits.argmax(1) == y).sum()
        if run.threads is not None:
            run.threads.after_step()
        if shown and step % 50 == 0:  # .item() waits for the device: only for a visible bar
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    if run.threads is not None:
        run.threads.restore()
    if run.lookahead is not None and epoch == config.epochs:
        run.lookahead.finish()  # the run ends on the slow weights: validated, kept, exported
    totals = all_sum(world, torch.stack([loss_sum.double(), correct.double()]))
    return totals[0].item() / len(images), totals[1].item() / len(images)


def _loss(
    logits: torch.Tensor, y: torch.Tensor, batch: int, smoothing: float, world: World
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to differentiate, and this share's contribution to the epoch's loss sum."""
    if world.distributed:
        # Sum over this share / global batch, times world size: DDP's average over ranks is
        # then the global batch's mean loss gradient, even for an uneven last batch.
        loss = F.cross_entropy(logits, y, reduction="sum", label_smoothing=smoothing) * (
            world.size / batch
        )
        return loss, loss.detach() * (batch / world.size)
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    return loss, loss.detach() * len(y)


def optimizer_step(run: Training, loss: torch.Tensor, epoch: int, global_step: int) -> None:
    """Backward, then the optimizer and everything that follows its step."""
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.whiten_bias is not None and epoch > run.config.whiten_bias_epochs:
        run.whiten_bias.grad = None  # frozen from here on: SGD skips a parameter without one
    run.optimizer.step()
    if run.lookahead is not None:
        run.lookahead.step(global_step, run.config.epochs * run.steps)
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    if run.scheduler is not None:
        run.scheduler.step()


def validate(run: Training, val: Split, world: World, device: torch.device) -> tuple[float, float]:
    """Rank 0 scores the kept weights on ``val`` and tells the others: (loss, accuracy)."""
    scores = torch.zeros(2, dtype=torch.float64, device=device)
    if world.is_main:
        config = run.config
        v = evaluate(run.scored, val, config.eval_batch_size, bf16=config.autocast == "bf16")
        scores[0], scores[1] = v.loss, v.accuracy
    val_loss, val_acc = (float(s) for s in from_main(world, scores).tolist())
    return val_loss, val_acc


def _silent(line: str) -> None:
    """The log of ranks other than 0: one voice for the whole job."""


def read_resume_config(path: Path) -> TrainConfig:
    """The recipe a resumable checkpoint (``last.pt``) was started with."""
    return ResumePoint.load(path).train_config


def split_data(config: TrainConfig, data: Cifar10) -> tuple[Split, Split, Split]:
    """fit, validation (held out of train) and test, as the config picks them (seeded); the
    retrain job's feedback images (``data.feedback``) join fit."""
    train = data.train.sample(config.limit_train, config.seed)
    test = data.test.sample(config.limit_test, config.seed)
    fit, val = train_val_split(train, config.val_size, config.seed)
    if data.feedback is not None and len(data.feedback):  # labelled traffic: trained on, not val
        fit = Split(
            np.concatenate([fit.images, data.feedback.images]),
            np.concatenate([fit.labels, data.feedback.labels]),
        )
    return fit, val, test


def run_training(
    config: TrainConfig,
    data: Cifar10,
    run_dir: Path,
    log: Log = print,
    *,
    world: World = ALONE,
    resume: Path | None = None,
) -> TrainingRun:
    """Split, train, evaluate once on the test split, and write the run's files into ``run_dir``.

    Rank 0's part of a distributed run (the other ranks call ``train_model`` alone); ``last.pt``
    in ``run_dir`` is rewritten after each epoch so that ``resume`` can carry on from it.
    """
    # matplotlib only when a run finishes
    from training.plots import plot_confusion, plot_history, plot_mistakes

    fit, val, test = split_data(config, data)
    log(f"Data: {len(fit)} train, {len(val)} validation (held out of train), {len(test)} test")
    if world.distributed:
        log(f"Distributed: {world.size} processes, {config.batch_size} images per step in all")
    result = train_model(
        config, fit, val, log, world=world, checkpoint=run_dir / LAST_CHECKPOINT, resume=resume
    )
    test_eval = evaluate(result.model, test, config.eval_batch_size)
    log(f"Test accuracy: {test_eval.accuracy:.4f} (loss {test_eval.loss:.4f}, {len(test)} images)")
    dataset = {
        **data.identity,
        "n_train": len(fit),
        "n_val": len(val),
        "n_test": len(test),
        "validation": f"{len(val)} images held out of the train split (seed {config.seed})",
    }
    run = dataclasses.replace(result, test=test_eval, dataset=dataset, run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "history.json").write_text(json.dumps(run.history, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(test_eval.as_dict(), indent=2) + "\n")
    plot_history(run.history, run_dir / "curves.png")
    plot_confusion(test_eval.confusion, list(CLASS_NAMES), run_dir / "confusion.png")
    plot_mistakes(test.images, test_eval.mistakes, run_dir / "mistakes.png")
    save_run(run, run_dir / RUN_CHECKPOINT)
    return run
