"""``python -m training recalibrate``: a published version again, with a temperature inside.

python -m training recalibrate models/cifar10_cnn_bn/2 --data data/cifar10-jpeg
python -m training recalibrate --model cifar10_cnn_bn --version 2

Same weights, no retraining: T is fitted on the validation slice the version's run held out of
the train split (rebuilt from its card), and the graph and a new card (with ``calibration``,
``reference`` and the JPEG accuracies; ``calibration.derived_from`` names the source) are
published as the model's next version.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.card import MODEL_FILE, read_card, sha256_file
from service.core.errors import DataError, PublishError
from training.pipeline import data_arguments, load_data


def add_recalibrate_command(sub: Any) -> None:
    parser = sub.add_parser(
        "recalibrate",
        help="publish a version again with a fitted temperature inside (same weights)",
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help="the version folder, e.g. models/cifar10_cnn_bn/2"
    )
    parser.add_argument("--model", help="model name in --repository (instead of a path)")
    parser.add_argument("--version", type=int, help="with --model (default: its newest)")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs go")
    data_arguments(parser)


def version_folder(args: argparse.Namespace) -> Path:
    """The source version: a path, or ``--model`` (and ``--version``) in the repository."""
    from training.publish import versions

    if args.path is not None:
        return Path(args.path)
    if not args.model:
        raise DataError("give a version folder or --model NAME [--version N]")
    model_dir = args.repository / args.model
    available = versions(model_dir)
    if not available:
        raise DataError(f"{model_dir}: no published versions")
    return model_dir / str(args.version if args.version is not None else available[-1])


def cmd_recalibrate(args: argparse.Namespace) -> None:
    from training.calibration_card import calibrate_export, held_out_of, test_of
    from training.export import git_commit
    from training.publish import publish

    source = version_folder(args)
    card = read_card(source)
    if sha256_file(source / MODEL_FILE) != card.sha256:
        raise PublishError(f"{source}: model.onnx does not match its card's sha256")
    data = load_data(args)
    fields: dict[str, Any] = copy.deepcopy(card.to_dict())
    held_out, test = held_out_of(fields, data), test_of(fields, data)
    work = args.runs_dir / f"{card.name}-{card.version}-calibrated"
    work.mkdir(parents=True, exist_ok=True)
    graph = work / MODEL_FILE
    shutil.copyfile(source / MODEL_FILE, graph)
    calibrate_export(fields, graph, held_out, test)
    fields["calibration"]["derived_from"] = {
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "git_commit": git_commit(),  # the code that fitted T; the card's own is the weights'
    }
    fields["calibration"]["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    for key in ("name", "version"):
        fields.pop(key)
    repository = source.parent.parent if args.path is not None else args.repository
    print(f"Published {publish(repository, card.name, graph, fields)}")
