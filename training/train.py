"""The training loop: the lecture's recipe, a Keras-like log, the best validation epoch kept.

python -m training train --data data/cifar10-jpeg
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from service.core.errors import InvalidConfig
from training.architectures import ARCHITECTURES
from training.augment import alternating_flips, augment_batch, augment_options
from training.config import TrainConfig
from training.data import CLASS_NAMES, Cifar10, Split, train_val_split
from training.distributed import ALONE, World, all_sum, from_main, rank_device, threads_per_process
from training.evaluation import Evaluation, evaluate
from training.lookahead import Lookahead
from training.model import Classifier, init_from_data, keras_init

Log = Callable[[str], None]
WHITENING_IMAGES = 5000  # training images whose patch statistics set a whitening layer
LAST_CHECKPOINT = "last.pt"  # rewritten after every epoch: what ``--resume`` takes


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_classifier(config: TrainConfig) -> Classifier:
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {', '.join(ARCHITECTURES)}")
    model = Classifier(ARCHITECTURES[config.arch], tta=config.tta)
    if config.init == "keras":
        keras_init(model)
    return model


def weights_sha256(model: torch.nn.Module) -> str:
    """One hash over every tensor of the state dict, in key order: equal weights, equal hash."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode() + b"\0" + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """A kill mid-save leaves the previous checkpoint, never half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_model(
    config: TrainConfig,
    fit: Split,
    val: Split,
    log: Log = print,
    *,
    world: World = ALONE,
    checkpoint: Path | None = None,
    resume: Path | None = None,
) -> TrainResult:
    """Adam on cross-entropy over logits; returns the weights of the best validation epoch
    (``--keep best``) or of the last one (``--keep last``).

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
    model = build_classifier(config)
    init_from_data(model, ARCHITECTURES[config.arch], fit.images[:WHITENING_IMAGES])
    model = model.to(device)
    optimizer = build_optimizer(config, model)
    steps = math.ceil(len(fit) / config.batch_size)
    total_steps = config.epochs * steps
    scheduler = build_schedule(config, optimizer, steps)
    augment = augment_options(config.augment, config.crop_pad, config.cutout_size)
    if config.flip == "alternate" and (augment is None or not augment.flip):
        raise InvalidConfig("--flip alternate needs an --augment that flips")
    whiten_bias = whitening_bias(model, config)
    lookahead = (
        Lookahead(model, config.lookahead_every, config.lookahead_decay)
        if config.lookahead_every > 0
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    augment_rng = torch.Generator().manual_seed(config.seed + 1 + world.rank)
    ema = weight_average(model, config.ema)
    # the weights validated, kept and exported
    scored = model if ema is None else cast(Classifier, ema.module)
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    first_epoch = 1
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if lookahead is not None and state.get("lookahead") is not None:
            lookahead.load_state_dict(state["lookahead"])
        if "augment_rng" in state:
            augment_rng.set_state(state["augment_rng"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        best_acc, best_epoch = state["best_accuracy"], state["best_epoch"]
        best_state = state["best"]
        first_epoch = state["epoch"] + 1
        log(f"Resuming from {resume}: {state['epoch']} of {config.epochs} epochs done")
    if world.rank > 0:
        torch.manual_seed(config.seed + world.rank)  # own dropout masks; rank 0 keeps a lone run's
    if world.distributed:
        # DDP broadcasts rank 0's weights, then all-reduces (averages) gradients in backward.
        net: torch.nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        net = model
    images = torch.from_numpy(fit.images).to(device)  # uint8 stays uint8 until the model scales it
    labels = torch.from_numpy(fit.labels).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast == "bf16")
    started = time.perf_counter()
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(fit), generator=generator).to(device)  # same on every rank
        flips = (  # by image, not by batch position: each image alternates across epochs
            alternating_flips(len(fit), epoch, config.seed + 2).to(device)
            if config.flip == "alternate"
            else None
        )
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(
            range(steps),
            desc=f"Epoch {epoch}/{config.epochs}",
            unit="step",
            leave=False,
            disable=None if world.is_main else True,
        )
        for step in bar:
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            idx = rank_share(batch, world)
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment_batch(x, augment_rng, augment, None if flips is None else flips[idx])
            with autocast:
                logits = net(x).float()
            smoothing = config.label_smoothing
            if world.distributed:
                # Sum over this share / global batch, times world size: DDP's average over ranks
                # is then the global batch's mean loss gradient, even for an uneven last batch.
                loss = F.cross_entropy(logits, y, reduction="sum", label_smoothing=smoothing) * (
                    world.size / len(batch)
                )
                loss_sum += loss.detach() * (len(batch) / world.size)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                loss_sum += loss.detach() * len(y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if whiten_bias is not None and epoch > config.whiten_bias_epochs:
                whiten_bias.grad = None  # frozen from here on: SGD skips a parameter without one
            optimizer.step()
            if lookahead is not None:
                lookahead.step((epoch - 1) * steps + step + 1, total_steps)
            if ema is not None:
                ema.update_parameters(model)
            if scheduler is not None:
                scheduler.step()
            correct += (logits.argmax(1) == y).sum()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        if lookahead is not None and epoch == config.epochs:
            lookahead.finish()  # the run ends on the slow weights: validated, kept, exported
        totals = all_sum(world, torch.stack([loss_sum.double(), correct.double()]))
        train_loss, train_acc = totals[0].item() / len(fit), totals[1].item() / len(fit)
        scores = torch.zeros(2, dtype=torch.float64, device=device)
        if world.is_main:
            v = evaluate(scored, val, config.eval_batch_size, bf16=config.autocast == "bf16")
            scores[0], scores[1] = v.loss, v.accuracy
        val_loss, val_acc = (float(s) for s in from_main(world, scores).tolist())
        seconds = time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch,
                "loss": train_loss,
                "accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": seconds,
            }
        )
        if val_acc > best_acc or config.keep == "last":
            best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(scored.state_dict())
        if checkpoint is not None and world.is_main:
            _save_atomic(
                {
                    "config": config.to_dict(),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "ema": ema.state_dict() if ema is not None else None,
                    "lookahead": lookahead.state_dict() if lookahead is not None else None,
                    "augment_rng": augment_rng.get_state(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_accuracy": best_acc,
                    "best_epoch": best_epoch,
                    "best": best_state,
                    "world_size": world.size,
                },
                checkpoint,
            )
        # Logged after the checkpoint: an epoch on the screen is an epoch a resume keeps.
        log(
            f"Epoch {epoch}/{config.epochs} - {seconds:.0f}s - loss: {train_loss:.4f} - "
            f"accuracy: {train_acc:.4f} - val_loss: {val_loss:.4f} - val_accuracy: {val_acc:.4f}"
        )
    model.load_state_dict(best_state)
    model.eval()
    which = "Last" if config.keep == "last" else "Best validation"
    log(f"{which} epoch kept: {best_epoch} (val_accuracy {best_acc:.4f})")
    return TrainResult(model, history, best_epoch, time.perf_counter() - started)


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
    """Adam (the lecture's) or SGD with (Nesterov) momentum; weight decay on either."""
    groups = parameter_groups(config, model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_schedule(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """None for a constant rate; one-cycle: a quarter of the steps up to ``lr``, then down."""
    if config.schedule != "onecycle":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],  # each group's own peak
        total_steps=max(1, config.epochs * steps_per_epoch),
        pct_start=0.25,
        anneal_strategy="linear",
    )


def rank_share(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a global batch: every ``size``-th from ``rank`` (DistributedSampler's
    split), so the ranks' shares differ in length by at most one and together are the batch."""
    return batch[world.rank :: world.size]


def _silent(line: str) -> None:
    """The log of ranks other than 0: one voice for the whole job."""


def read_resume_config(path: Path) -> TrainConfig:
    """The recipe a resumable checkpoint (``last.pt``) was started with."""
    return TrainConfig(**torch.load(path, map_location="cpu", weights_only=True)["config"])


@dataclass
class TrainingRun:
    """Everything a finished run hands to export: weights, config, evidence."""

    config: TrainConfig
    model: Classifier
    history: list[dict[str, float]]
    best_epoch: int
    test: Evaluation
    dataset: dict[str, Any]
    seconds: float
    run_dir: Path


def split_data(config: TrainConfig, data: Cifar10) -> tuple[Split, Split, Split]:
    """fit, validation (held out of train) and test, as the config picks them (seeded)."""
    train = data.train.sample(config.limit_train, config.seed)
    test = data.test.sample(config.limit_test, config.seed)
    fit, val = train_val_split(train, config.val_size, config.seed)
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
    run = TrainingRun(
        config,
        result.model,
        result.history,
        result.best_epoch,
        test_eval,
        dataset,
        result.seconds,
        run_dir,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "history.json").write_text(json.dumps(result.history, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(test_eval.as_dict(), indent=2) + "\n")
    plot_history(result.history, run_dir / "curves.png")
    plot_confusion(test_eval.confusion, list(CLASS_NAMES), run_dir / "confusion.png")
    plot_mistakes(test.images, test_eval.mistakes, run_dir / "mistakes.png")
    save_checkpoint(run, run_dir / "checkpoint.pt")
    return run


def save_checkpoint(run: TrainingRun, path: Path) -> None:
    torch.save(
        {
            "config": run.config.to_dict(),
            "state_dict": run.model.state_dict(),
            "history": run.history,
            "best_epoch": run.best_epoch,
            "test": run.test.as_dict(),
            "dataset": run.dataset,
            "seconds": run.seconds,
        },
        path,
    )


def load_checkpoint(path: Path) -> TrainingRun:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig(**ckpt["config"])
    model = build_classifier(config)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    t = ckpt["test"]
    test = Evaluation(
        t["loss"],
        t["accuracy"],
        t["per_class_accuracy"],
        t["confusion_matrix"],
        t.get("most_confident_mistakes", []),
    )
    return TrainingRun(
        config,
        model,
        ckpt["history"],
        ckpt["best_epoch"],
        test,
        ckpt["dataset"],
        ckpt["seconds"],
        path.parent,
    )
