"""What the training package's epoch loop costs beyond the arithmetic: ``train_epoch`` (the
package's loop: batches from the seeded order, metrics, progress bar) against the bare step
(gather, forward, loss, backward, fused Adam, nothing else) on the same model, optimizer, images
and threads, in alternating rounds so that both see the same load (issue 28).

    python -m bench train-loop [--recipe lecture] [--steps 100] [--rounds 8] [--no-write]

Prints images/s of each round, and writes ``docs/results/train-loop.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.publish import publish
from bench.results import ROOT
from training.data import load_cifar10
from training.distributed import ALONE
from training.recipes import RECIPES, recipe
from training.run_state import Training, start_training
from training.train import mixed_precision, train_epoch


def bare_steps(run: Training, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One pass of the recipe's step and nothing else: what ``train_epoch`` costs at least."""
    model, optimizer, size = run.model, run.optimizer, run.config.batch_size
    autocast = mixed_precision(run.config, images.device)
    order = torch.randperm(len(images))
    model.train()
    for step in range(run.steps):
        idx = order[step * size : (step + 1) * size]
        with autocast:
            logits = model(images.index_select(0, idx)).float()
        loss = F.cross_entropy(logits, labels.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def alternate(
    loops: dict[str, Callable[[], object]], images: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """images/s of each loop in each round, and the main thread's CPU seconds per round (with
    one thread, what the loop costs whatever else the cores run); the order turns every round,
    after one warm-up each."""
    for loop in loops.values():
        loop()
    names = list(loops)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, cpu_start = time.perf_counter(), time.thread_time()
            loops[name]()
            rates[name].append(images / (time.perf_counter() - start))
            cpu[name].append(time.thread_time() - cpu_start)
    return rates, cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=ROOT / "data/cifar10-jpeg")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="lecture")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = recipe(args.recipe)
    fit = load_cifar10(args.data, ROOT / ".cache").train.sample(
        args.steps * config.batch_size, config.seed
    )
    torch.manual_seed(0)
    run = start_training(config, fit, torch.device("cpu"), ALONE)
    images, labels = torch.from_numpy(fit.images), torch.from_numpy(fit.labels)
    loops: dict[str, Callable[[], object]] = {
        "train_epoch": lambda: train_epoch(run, run.model, images, labels, 1, ALONE),
        "bare step": lambda: bare_steps(run, images, labels),
    }
    rates, cpu = alternate(loops, run.steps * config.batch_size, args.rounds)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    cpu_us = {name: min(c) / run.steps * 1e6 for name, c in cpu.items()}  # per step, best round
    for name, r in rates.items():
        print(
            f"{name}: median {medians[name]:,.0f} images/s ({', '.join(f'{x:,.0f}' for x in r)}); "
            f"main thread {cpu_us[name]:,.0f} us CPU per step"
        )
    results = {
        "recipe": args.recipe, "autocast": config.autocast, "batch_size": config.batch_size,
        "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
        "rates": rates, "medians": medians,
        "ratio": medians["train_epoch"] / medians["bare step"],
        "best_ratio": max(rates["train_epoch"]) / max(rates["bare step"]),
        "cpu_us_per_step": cpu_us,
    }  # fmt: skip
    publish("train-loop", results, args.no_write)
