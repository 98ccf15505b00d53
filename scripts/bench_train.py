"""Training throughput of the lecture's CNN on this machine, written to docs/benchmarks.md.

    make bench            # or: python scripts/bench_train.py --data data/cifar10-jpeg

Times real optimizer steps (batch 32, Adam, the lecture's recipe) on real CIFAR-10 images after a
warm-up, and in-process onnxruntime inference of the shipped model; figures go to the markdown file
with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.report import write_section  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import load_cifar10  # noqa: E402
from training.model import build_classifier  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.train import mixed_precision, resolve_device  # noqa: E402

EPOCH_IMAGES = 50_000


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_training(
    images: np.ndarray, labels: np.ndarray, config: TrainConfig, steps: int, repeats: int
) -> list[float]:
    """Images per second of full training steps of ``config``'s model, optimizer and autocast,
    one figure per repeat."""
    torch.manual_seed(0)
    dev = resolve_device(config.device)
    model = build_classifier(config).to(dev).train()
    optimizer = build_optimizer(config, model)
    autocast = mixed_precision(config, dev)
    x_all = torch.from_numpy(images).to(dev)
    y_all = torch.from_numpy(labels).to(dev)
    batch = config.batch_size
    rates = []
    for repeat in range(repeats + 1):  # the first pass is the warm-up
        order = torch.randperm(len(x_all), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[(step * batch) % (len(x_all) - batch) :][:batch]
            with autocast:
                logits = model(x_all[idx]).float()
            loss = F.cross_entropy(logits, y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if repeat:
            rates.append(steps * batch / (time.perf_counter() - t0))
    return rates


def bench_onnx(model_path: Path, images: np.ndarray, batch: int, seconds: float) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = images[:batch]
    session.run(["logits"], {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(["logits"], {"images": x})
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data/cifar10-jpeg")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--autocast",
        default=TrainConfig.autocast,
        choices=("none", "bf16"),
        help="mixed precision, as python -m training's flag (default: the lecture recipe's)",
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/cifar10_cnn/1/model.onnx")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the training rates here")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md as is")
    parser.add_argument("--no-onnx", action="store_true", help="training only")
    args = parser.parse_args()

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = load_cifar10(args.data, ROOT / ".cache")
    config = TrainConfig(device=args.device, autocast=args.autocast)
    rates = bench_training(data.train.images, data.train.labels, config, args.steps, args.repeats)
    rate = statistics.median(rates)
    if args.json is not None:
        how = (
            f"{args.steps} steps x {args.repeats} repeats after a warm-up, autocast "
            f"{args.autocast}, scripts/bench_train.py"
        )
        args.json.write_text(json.dumps({"rates": rates, "how": how}))
    lines = [
        f"| training, batch 32, Adam ({args.device}, autocast {args.autocast}) "
        f"| {rate:,.0f} images/s "
        f"(repeats: {', '.join(f'{r:,.0f}' for r in rates)}) | "
        f"{EPOCH_IMAGES / rate:.1f} s per 50,000-image epoch |"
    ]
    if args.model.exists() and not args.no_onnx:
        for batch in (1, 32):
            ips = bench_onnx(args.model, data.test.images, batch, 3.0)
            lines.append(
                f"| onnxruntime inference, batch {batch} (CPU, in process) "
                f"| {ips:,.0f} images/s | |"
            )
    machine = (
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores given to the process, "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"Python {platform.python_version()}"
    )
    report = "\n".join(
        [
            "## Training",
            "",
            f"- When: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- Machine: {machine}",
            f"- Command: `python scripts/bench_train.py --device {args.device} "
            f"--steps {args.steps} --repeats {args.repeats} --autocast {args.autocast}`",
            f"- Data: CIFAR-10 JPEG copy ({args.data})",
            "- Model: the lecture's CNN (122,570 parameters)",
            "",
            "| what | throughput | epoch |",
            "|---|---|---|",
            *lines,
        ]
    )
    if not args.no_write:
        write_section(args.out, "training", report)
    print(report)


if __name__ == "__main__":
    main()
