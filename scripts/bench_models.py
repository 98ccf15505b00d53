"""The model table: every model in the repository with its accuracy, size, cost and speed.

    make bench            # or: python scripts/bench_models.py [--seconds 3] [--repeats 3]

Accuracy, parameters, training time and recipe come from each version's card; multiply-adds from
the card's architecture (``service.core.shapes.multiply_adds``); throughput is measured here, as
in-process onnxruntime images/s at batch 32 on one session with the default threads (the median
of ``--repeats`` timed windows). Writes the table to ``docs/benchmarks.md`` (models section) and
prints it for the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.report import write_section  # noqa: E402
from service.core.card import MODEL_FILE, ModelCard, read_card  # noqa: E402
from service.core.shapes import layer_table, multiply_adds  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BATCH = 32


def images_per_second(path: Path, seconds: float, repeats: int) -> float:
    """Median images/s of ``repeats`` windows of ``seconds`` each, after a warm-up."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    for _ in range(5):
        session.run(None, {"images": x})
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"images": x})
            n += BATCH
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def row(card: ModelCard, version_dir: Path, seconds: float, repeats: int) -> dict[str, Any]:
    """One model's line; what its card does not say is left blank, not guessed."""
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
        "throughput": images_per_second(version_dir / MODEL_FILE, seconds, repeats),
    }


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | architecture | test accuracy | parameters | multiply-adds | training "
        "(this CPU) | onnxruntime images/s, batch 32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | `{r['architecture']}` | {_cell(r['accuracy'], '.4f')} | "
            f"{_cell(r['params'], ',')} | {_cell(r['macs'] and r['macs'] / 1e6, '.1f')} M | "
            f"{r['training']} | {r['throughput']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per model")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows = []
    for version_dir in sorted(args.repository.glob("*/[0-9]*")):
        if version_dir.parent.name.startswith("."):
            continue
        rows.append(row(read_card(version_dir), version_dir, args.seconds, args.repeats))
        print(f"{rows[-1]['model']}: {rows[-1]['throughput']:,.0f} images/s", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if not args.no_write:
        body = (
            "## Models\n\n"
            f"`python scripts/bench_models.py`, {datetime.now(UTC):%Y-%m-%d}, onnxruntime "
            f"{ort.__version__}, in process, batch {BATCH}, median of {args.repeats} windows of "
            f"{args.seconds:g} s. Accuracy is the card's (test split of the JPEG copy, no "
            "test-time augmentation); training time is the card's wall time of the epochs.\n\n"
            + table
        )
        write_section(DOC, "models", body)


if __name__ == "__main__":
    main()
