"""Training throughput of the lecture's CNN on this machine: the training package's own epoch
loop (``training.train.train_epoch``, every step exactly as ``python -m training`` runs it) timed
on real CIFAR-10 images after a warm-up, and in-process onnxruntime inference of the shipped model.

    make bench            # or: python -m bench train --data data/cifar10-jpeg [--no-write]

Writes ``docs/results/training.json`` (with the command and the machine); ``--json PATH`` also
writes the training rates alone, for ``python -m bench peers``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import torch

from bench.onnx_timer import images_per_second
from bench.publish import publish
from bench.results import ROOT
from training.config import TrainConfig
from training.data import Split, load_cifar10
from training.distributed import ALONE
from training.recipes import RECIPES, recipe
from training.run_state import start_training
from training.train import resolve_device, train_epoch

EPOCH_IMAGES = 50_000


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_training(train: Split, config: TrainConfig, steps: int, repeats: int) -> list[float]:
    """Images per second of ``steps`` steps of ``config``'s recipe, one figure per repeat: each
    repeat is one epoch of the package's loop over ``steps`` batches of the training images."""
    torch.manual_seed(0)
    dev = resolve_device(config.device)
    fit = train.sample(steps * config.batch_size, config.seed)
    run = start_training(config, fit, dev, ALONE)
    images, labels = torch.from_numpy(fit.images).to(dev), torch.from_numpy(fit.labels).to(dev)
    rates = []
    for repeat in range(repeats + 1):  # the first pass is the warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_epoch(run, run.model, images, labels, 1, ALONE)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if repeat:
            rates.append(run.steps * config.batch_size / (time.perf_counter() - t0))
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=ROOT / "data/cifar10-jpeg")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="the recipe whose step is timed, as python -m training's flag (default: "
        "TrainConfig's defaults, the lecture's recipe in float32)",
    )
    parser.add_argument(
        "--autocast",
        choices=("none", "bf16"),
        help="mixed precision, as python -m training's flag (default: the recipe's)",
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/cifar10_cnn/1/model.onnx")
    parser.add_argument("--json", type=Path, help="also write the training rates here")
    parser.add_argument("--no-write", action="store_true", help="leave docs/results as they are")
    parser.add_argument("--no-onnx", action="store_true", help="training only")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = load_cifar10(args.data, ROOT / ".cache")
    config = dataclasses.replace(recipe(args.recipe), device=args.device)
    if args.autocast is not None:
        config = dataclasses.replace(config, autocast=args.autocast)
    rates = bench_training(data.train, config, args.steps, args.repeats)
    rate = statistics.median(rates)
    if args.json is not None:
        how = (
            f"{args.steps} steps x {args.repeats} repeats after a warm-up, autocast "
            f"{config.autocast}, python -m bench train"
        )
        args.json.write_text(json.dumps({"rates": rates, "how": how}))
    onnx = {}
    if args.model.exists() and not args.no_onnx:
        for batch in (1, 32):
            onnx[str(batch)] = images_per_second(
                args.model, batch, 3.0, outputs=["logits"], images=data.test.images
            )
    machine = (
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores given to the process, "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"Python {platform.python_version()}"
    )
    results = {
        "machine": machine, "device": args.device, "autocast": config.autocast,
        "recipe": args.recipe,
        "steps": args.steps, "repeats": args.repeats, "data": str(args.data),
        "rates": rates, "images_per_s": rate, "epoch_s": EPOCH_IMAGES / rate,
        "onnx_images_per_s": onnx,
    }  # fmt: skip
    publish("training", results, args.no_write)
