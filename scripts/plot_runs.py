"""Validation accuracy against wall time for training runs, as one PNG (docs/training-94.md).

    python scripts/plot_runs.py --out docs/images/cifar_94-accuracy-vs-time.png \\
        "seed 0=runs/cifar_94-20261130-115910" "seed 1=runs/..."

Each argument is LABEL=RUN_DIR; a run folder holds the history.json and metrics.json that
``python -m training`` writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.plots import plot_accuracy_vs_time  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected LABEL=RUN_DIR")
        run = Path(folder)
        history = json.loads((run / "history.json").read_text())
        test_accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
        runs.append((label, history, float(test_accuracy)))
    plot_accuracy_vs_time(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
