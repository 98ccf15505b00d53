"""The experiments beside the recipes, as subcommands of ``python -m training``:

python -m training ablate no-lookahead [--seed 1 --data ...]   # cifar_94 without one method
python -m training plot-runs --out chart.png "seed 0=runs/<run>" "seed 1=runs/<run>" ...
python -m training recompress data/cifar10-jpeg data/cifar10-jpeg-q50 --quality 50

``ablate`` and ``recompress`` write their figures to docs/results/<name>.json (bench.results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from training.config import TrainConfig, config_from_args
from training.pipeline import DEFAULT_DATA, train_and_export, training_arguments
from training.recipes import ABLATIONS, CIFAR_94, ablated


def add_experiment_commands(sub: Any) -> None:
    """``ablate``, ``plot-runs`` and ``recompress``."""
    ablate = sub.add_parser(
        "ablate",
        help="train the cifar_94 recipe with one method removed, into runs/; never published",
        description="Train the cifar_94 recipe without one method (training/recipes.py: "
        "ABLATIONS); flags override the recipe's fields, the ablation's own fields win over them",
    )
    ablate.add_argument("variant", choices=list(ABLATIONS), help="the method removed")
    training_arguments(ablate)
    _results_argument(ablate)

    plot = sub.add_parser("plot-runs", help="validation accuracy against wall time, one PNG")
    plot.add_argument(
        "runs", nargs="+", type=_labelled_run, help="LABEL=RUN_DIR (a run folder of this package)"
    )
    plot.add_argument("--out", type=Path, required=True, help="the PNG to write")

    recompress = sub.add_parser(
        "recompress", help="a copy of an image-folder CIFAR-10 re-encoded at another JPEG quality"
    )
    recompress.add_argument(
        "source", type=Path, help="image-folder CIFAR-10 (<split>/<class>/*.jpg)"
    )
    recompress.add_argument("dest", type=Path, help="where the re-encoded copy goes (git-ignored)")
    recompress.add_argument("--quality", type=_quality, default=50, help="JPEG quality, 1-95")
    _results_argument(recompress)


def _results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir", type=Path, help="where the figures' JSON goes (default: docs/results/)"
    )


def _labelled_run(item: str) -> tuple[str, Path]:
    label, sep, folder = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{item!r}: expected LABEL=RUN_DIR")
    return label, Path(folder)


def _quality(text: str) -> int:
    quality = int(text)
    if not 1 <= quality <= 95:
        raise argparse.ArgumentTypeError(f"{quality}: Pillow's useful JPEG qualities are 1-95")
    return quality


def ablation_config(args: argparse.Namespace) -> TrainConfig:
    """cifar_94, then the flags given, then the ablation's fields (which win, as it is named)."""
    return ablated(config_from_args(args, CIFAR_94), args.variant)


def cmd_ablate(args: argparse.Namespace) -> None:
    from bench.results import write_result  # first, so a checkout without it fails before training

    started = time.monotonic()
    ablation = ABLATIONS[args.variant]
    config = ablation_config(args)
    print(f"ablation {args.variant}: {ablation.flags() or 'the recipe as it is'}", flush=True)
    trained = train_and_export(args, config)
    if trained is None:  # not rank 0
        return
    run = trained[0]
    assert run.test is not None
    name = f"ablate-94-{args.variant}-seed{run.config.seed}"
    if args.data != DEFAULT_DATA:
        name += f"-{args.data.name}"
    results: dict[str, Any] = {
        "variant": args.variant,
        "removes": ablation.removes,
        "data": str(args.data),
        "seed": run.config.seed,
        "epochs": len(run.history),
        "val_accuracy": run.history[run.best_epoch - 1]["val_accuracy"],
        "test_accuracy": run.test.accuracy,
        "test_images": len(trained[1]),
        "training_seconds": round(run.seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "run_dir": str(run.run_dir),
        "config": run.config.to_dict(),
    }
    print(f"Results: {write_result(name, results, directory=args.results_dir)}")


def cmd_plot_runs(args: argparse.Namespace) -> None:
    from training.plots import plot_accuracy_vs_time

    runs = []
    for label, run in args.runs:
        history = json.loads((run / "history.json").read_text())
        test_accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
        runs.append((label, history, float(test_accuracy)))
    plot_accuracy_vs_time(runs, args.out)
    print(f"wrote {args.out}")


def cmd_recompress(args: argparse.Namespace) -> None:
    from bench.results import write_result
    from training.recompress import recompress

    if args.dest.resolve() == args.source.resolve():
        print("error: dest must differ from source", file=sys.stderr)
        raise SystemExit(2)
    stats = recompress(args.source, args.dest, args.quality)
    print(json.dumps(stats))
    record = {"source": str(args.source), "dest": str(args.dest), **stats}
    write_result(f"recompress-q{args.quality}", record, directory=args.results_dir)


EXPERIMENT_COMMANDS = {
    "ablate": cmd_ablate,
    "plot-runs": cmd_plot_runs,
    "recompress": cmd_recompress,
}
