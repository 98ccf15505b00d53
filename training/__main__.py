"""Training command line.

python -m training train --data data/cifar10-jpeg           # train, test, export, publish
python -m training export --checkpoint runs/<run>/checkpoint.pt --data data/cifar10-jpeg
python -m training evaluate --model models/cifar10_cnn/1 --data data/cifar10-jpeg
python -m training summary [--arch lecture]                   # the Keras-style layer table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from service.core.card import MODEL_FILE
from service.core.errors import ServingError
from service.core.shapes import format_table, layer_table
from training.architectures import ARCHITECTURES, INPUT_SHAPE
from training.config import add_config_arguments, config_from_args
from training.data import download_cifar10, load_cifar10

DEFAULT_DATA = Path("data/cifar10-jpeg")
DEFAULT_NAME = "cifar10_cnn"


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 folder: an image "
        "folder <root>/<split>/<class>/*.jpg or cifar-10-batches-py/",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache"),
        help="where decoded arrays are cached (git-ignored)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch the official python batches "
        "into --data first (checked against the published MD5)",
    )


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name in the repository")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate on the test split, export and publish")
    add_config_arguments(train)
    _data_arguments(train)
    _publish_arguments(train)
    train.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are written")
    train.add_argument("--no-publish", action="store_true", help="train and export, don't publish")

    export = sub.add_parser("export", help="export a checkpoint, check parity, publish")
    export.add_argument("--checkpoint", type=Path, required=True)
    _data_arguments(export)
    _publish_arguments(export)

    evaluate = sub.add_parser("evaluate", help="test accuracy of a published model (onnxruntime)")
    evaluate.add_argument("--model", type=Path, required=True, help="version folder or .onnx file")
    evaluate.add_argument("--limit-test", type=int, default=0, help="first N test images (0: all)")
    _data_arguments(evaluate)

    summary = sub.add_parser("summary", help="print the Keras-style layer table")
    summary.add_argument("--arch", default="lecture", choices=sorted(ARCHITECTURES))
    summary.add_argument("--spec", type=Path, help="JSON file with a list of layer specs instead")
    summary.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    root: Path = args.data
    if args.download:
        root = download_cifar10(root)
    return load_cifar10(root, args.cache_dir)


def export_and_publish(run, test_images: np.ndarray, repository: Path, name: str | None) -> Path:  # type: ignore[no-untyped-def]
    """Export the run's model, pass the parity gate, and publish (unless ``name`` is None)."""
    from training.export import card_fields, check_parity, export_onnx
    from training.publish import publish

    onnx_path = run.run_dir / MODEL_FILE
    export_onnx(run.model, onnx_path)
    parity = check_parity(run.model, onnx_path, test_images)
    print(
        f"Parity: {parity.images} images, max |logit diff| {parity.max_abs_logit_diff:.2e}, "
        f"top-1 agreement {parity.top1_agreement:.4f}"
    )
    if name is None:
        return onnx_path
    fields = card_fields(run, onnx_path, parity)
    final = publish(repository, name, onnx_path, fields)
    print(f"Published {final}")
    return final


def cmd_train(args: argparse.Namespace) -> None:
    from training.train import run_training

    config = config_from_args(args)
    data = _load(args)
    run_dir = args.runs_dir / f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = run_training(config, data, run_dir)
    test = data.test.sample(config.limit_test, config.seed)
    export_and_publish(run, test.images, args.repository, None if args.no_publish else args.name)
    print(f"Run files: {run_dir}")


def cmd_export(args: argparse.Namespace) -> None:
    from training.train import load_checkpoint

    run = load_checkpoint(args.checkpoint)
    data = _load(args)
    export_and_publish(
        run,
        data.test.sample(run.config.limit_test, run.config.seed).images,
        args.repository,
        args.name,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from training.train import evaluate_logits

    path: Path = args.model / MODEL_FILE if args.model.is_dir() else args.model
    test = _load(args).test.sample(args.limit_test, 0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [
            session.run(["logits"], {"images": test.images[i : i + 500]})[0]
            for i in range(0, len(test), 500)
        ]
    )
    result = evaluate_logits(logits, test.labels)
    print(json.dumps({"model": str(path), "images": len(test), **result.as_dict()}, indent=2))


def cmd_summary(args: argparse.Namespace) -> None:
    layers = json.loads(args.spec.read_text()) if args.spec else ARCHITECTURES[args.arch]
    table = layer_table(INPUT_SHAPE, layers)
    print(json.dumps(table.as_dict(), indent=2) if args.json else format_table(table))


COMMANDS = {
    "train": cmd_train,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "summary": cmd_summary,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ServingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the repository is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
