"""The one in-process onnxruntime timer: images/s of a model file alone, no server, the ceiling
the serving figures are compared against."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.results import ROOT


def latest_version(model: str, repository: Path = ROOT / "models") -> Path:
    """The model file of ``model``'s highest version in ``repository``."""
    versions = [p for p in (repository / model).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with onnxruntime's defaults, or with ``threads`` intra-op threads, one
    inter-op thread and no spinning, as the service's sessions are made."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def images_per_second(
    path: Path,
    batch: int,
    seconds: float,
    *,
    repeats: int = 1,
    warmup_runs: int = 1,
    threads: int | None = None,
    outputs: list[str] | None = None,
    images: np.ndarray | None = None,
    seed: int | None = None,
) -> float:
    """Median images/s over ``repeats`` windows of ``seconds`` of ``session.run`` at ``batch``,
    after ``warmup_runs`` untimed runs. The input is ``images[:batch]``, else random UINT8 pixels
    (seeded by ``seed``, by default the batch size)."""
    run = session(path, threads)
    if images is None:
        rng = np.random.default_rng(batch if seed is None else seed)
        images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    feed = {"images": images[:batch]}
    for _ in range(warmup_runs):
        run.run(outputs, feed)
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run.run(outputs, feed)
            n += batch
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    """One figure as a JSON number, in a process of its own so that it can be started on chosen
    cores (``taskset -c 0 python -m bench.onnx_timer MODEL.onnx --batch 32 --threads 1``)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--output", action="append", default=None, help="outputs to fetch")
    args = parser.parse_args()
    rate = images_per_second(
        args.model, args.batch, args.seconds, threads=args.threads, outputs=args.output
    )
    print(json.dumps(rate))


if __name__ == "__main__":
    main()
