"""The model table: every model in the repository with its accuracy, size, cost and speed.

    make bench            # or: python -m bench models [--seconds 3] [--repeats 3] [--no-write]

Accuracy, parameters, training time and recipe come from each version's card; multiply-adds from
the card's architecture (``service.core.shapes.multiply_adds``); throughput is measured here, as
in-process onnxruntime images/s at batch 32 on one session with the default threads (the median
of ``--repeats`` timed windows). Writes ``docs/results/models.json``, from which the table in
docs/benchmarks.md and the README is rendered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort

from bench.onnx_timer import images_per_second
from bench.publish import publish
from bench.results import ROOT
from service.core.card import MODEL_FILE, ModelCard, read_card
from service.core.shapes import layer_table, multiply_adds

BATCH = 32


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def card_row(card: ModelCard) -> dict[str, Any]:
    """One model's line from its card alone; what the card does not say is left blank."""
    arch = card.architecture
    table = layer_table(tuple(arch["input_shape"]), arch["layers"]) if arch else None
    config = card.training.get("config", {})
    quantized = bool(card.quantization)
    training = (
        f"{_minutes(card.training['seconds'])}, {config.get('epochs')} epochs"
        if "seconds" in card.training
        else ""
    )
    return {
        "model": f"{card.name}/{card.version}",
        "architecture": arch.get("name", "?") + (" (INT8 QDQ)" if quantized else ""),
        "accuracy": card.metrics.get("test_accuracy"),
        "params": table.total_params if table else None,
        "macs": multiply_adds(table, arch["layers"]) if table else None,
        "training": training + (" (then quantized)" if quantized and training else ""),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per model")
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    rows = []
    for version_dir in sorted(args.repository.glob("*/[0-9]*")):
        if version_dir.parent.name.startswith("."):
            continue
        row = card_row(read_card(version_dir))
        row["throughput"] = images_per_second(
            version_dir / MODEL_FILE, BATCH, args.seconds, repeats=args.repeats, warmup_runs=5,
            seed=0,
        )  # fmt: skip
        rows.append(row)
        print(f"{row['model']}: {row['throughput']:,.0f} images/s", file=sys.stderr)
    results = {
        "onnxruntime": ort.__version__,
        "batch": BATCH,
        "repeats": args.repeats,
        "seconds": args.seconds,
        "rows": rows,
    }
    publish("models", results, args.no_write)
