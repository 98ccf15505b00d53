"""Lecture CNN training rates: one process with 2 threads against data-parallel training in two
single-threaded processes (DDP over gloo, the same global batch of 32), each in float32 and bf16
autocast, with Adam's per-tensor loop and fused (issue 16; docs/benchmarks.md).

    python -m bench train-variants [--steps 300] [--repeats 3] [--no-write]

Prints one line per variant: images/s of each timed repeat (after 50 warm-up steps), and writes
them to ``docs/results/train-variants.json``. Its step is written out here, not the package's:
the variants (per-tensor Adam, DDP by hand) are the alternatives the package does not run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bench.publish import publish
from bench.results import ROOT
from bench.server import free_port
from training.config import TrainConfig
from training.data import load_cifar10
from training.model import build_classifier

BATCH, WARMUP_STEPS, IMAGES = 32, 50, 20_000


def _data(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_cifar10(root, ROOT / ".cache")
    images = torch.from_numpy(data.train.images[:IMAGES])
    return images, torch.from_numpy(data.train.labels[:IMAGES]).long()


def _steps(run: dict[str, Any], steps: int, rank: int, world: int) -> None:
    """``steps`` training steps of the global batch; this rank takes its share of each."""
    model, optimizer, x, y = run["model"], run["optimizer"], run["x"], run["y"]
    share = BATCH // world
    for step in range(steps):
        batch = run["order"][(step * BATCH) % (len(x) - BATCH) :][:BATCH]
        idx = batch[rank * share : (rank + 1) * share]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run["bf16"]):
            logits = model(x[idx]).float()
        loss = F.cross_entropy(logits, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _timed(run: dict[str, Any], steps: int, repeats: int, rank: int, world: int) -> list[float]:
    sync = dist.barrier if world > 1 else (lambda: None)
    _steps(run, WARMUP_STEPS, rank, world)
    rates = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        _steps(run, steps, rank, world)
        sync()
        rates.append(steps * BATCH / (time.perf_counter() - start))
    return rates


def _setup(model: torch.nn.Module, data: Path, bf16: bool, fused: bool) -> dict[str, Any]:
    x, y = _data(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return {"model": model, "optimizer": optimizer, "x": x, "y": y, "order": order, "bf16": bf16}


def _rank(
    rank: int, port: int, args: argparse.Namespace, bf16: bool, fused: bool, out: Any
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_classifier(TrainConfig()).train())
    rates = _timed(_setup(model, args.data, bf16, fused), args.steps, args.repeats, rank, 2)
    if rank == 0:
        out.put(rates)
    dist.destroy_process_group()


def _ddp(args: argparse.Namespace, bf16: bool, fused: bool) -> list[float]:
    """The same variant as data-parallel training in two single-threaded processes."""
    context = mp.get_context("spawn")
    out = context.Queue()
    port = free_port()
    ranks = [
        context.Process(target=_rank, args=(r, port, args, bf16, fused, out)) for r in range(2)
    ]
    for process in ranks:
        process.start()
    rates: list[float] = out.get()
    for process in ranks:
        process.join()
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=ROOT / "data/cifar10-jpeg")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    variants = []
    for bf16 in (False, True):
        for fused in (False, True):
            name = f"{'bf16 autocast' if bf16 else 'float32'}, {'fused Adam' if fused else 'Adam'}"
            torch.set_num_threads(2)
            torch.manual_seed(0)
            run = _setup(build_classifier(TrainConfig()).train(), args.data, bf16, fused)
            one = _timed(run, args.steps, args.repeats, 0, 1)
            print(f"{name}, 1 process x 2 threads: {', '.join(f'{r:,.0f}' for r in one)}")
            ddp = _ddp(args, bf16, fused)
            print(f"{name}, DDP 2 processes x 1 thread: {', '.join(f'{r:,.0f}' for r in ddp)}")
            variants.append({"name": name, "one_process": one, "ddp": ddp})
    results = {"steps": args.steps, "repeats": args.repeats, "warmup_steps": WARMUP_STEPS,
               "variants": variants}  # fmt: skip
    publish("train-variants", results, args.no_write)
