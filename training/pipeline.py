"""What ``train``, ``retrain`` and ``ablate`` share: their arguments, then load, train, test and
export (with the parity gate, then temperature scaling); publishing and the quality gate are the
commands' own."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from service.core.card import MODEL_FILE
from training.config import TrainConfig, add_config_arguments
from training.data import Cifar10, Split, download_cifar10, load_cifar10
from training.distributed import World

if TYPE_CHECKING:
    from training.checkpoint import TrainingRun
    from training.evaluation import Parity

# What a run gives rank 0: the run, its test split, the exported graph and the card's fields.
Trained: TypeAlias = "tuple[TrainingRun, Split, Path, dict[str, Any]]"

DEFAULT_DATA = Path("data/cifar10-jpeg")
DEFAULT_NAME = "cifar10_cnn"


def data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10: an image folder <root>/<split>/<class>/*.jpg or cifar-10-batches-py/",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(".cache"), help="where decoded arrays are cached"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="first fetch the official python batches into --data (checked by the published MD5)",
    )


def publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name in the repository")


def training_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    data_arguments(parser)
    publish_arguments(parser)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs go")
    parser.add_argument(
        "--resume",
        type=Path,
        help="carry on an interrupted run from its runs/<run>/last.pt, in the same run folder: "
        "the recipe comes from the checkpoint (only --threads and --device from this command)",
    )


def load_data(args: argparse.Namespace) -> Cifar10:
    root: Path = args.data
    if args.download:
        root = download_cifar10(root)
    return load_cifar10(root, args.cache_dir)


def export_run(run: TrainingRun, test: Split) -> tuple[Path, Parity]:
    """Export the run's model beside its other files and pass the parity gate."""
    from training.evaluation import check_parity
    from training.export import export_onnx

    assert run.run_dir is not None, "a run is exported beside its files"
    onnx_path = run.run_dir / MODEL_FILE
    export_onnx(run.model, onnx_path)
    parity = check_parity(run.model, onnx_path, test.images)
    print(
        f"Parity: {parity.images} images, max |logit diff| {parity.max_abs_logit_diff:.2e}, "
        f"top-1 agreement {parity.top1_agreement:.4f}"
    )
    return onnx_path, parity


def calibrate_run(
    run: TrainingRun, data: Cifar10, test: Split, onnx_path: Path, fields: dict[str, Any]
) -> dict[str, Any]:
    """Temperature scaling after the parity gate, on the run's own validation slice (rebuilt as
    ``split_data`` chose it): T into ``onnx_path``, the calibration and reference blocks and the
    JPEG accuracies into ``fields``, ``reliability.png`` beside the graph for ``publish``."""
    from training.calibration_card import HeldOut, calibrate_export, held_out_description
    from training.train import split_data

    _, val, _ = split_data(run.config, data)
    held_out = HeldOut(val, held_out_description(run.dataset, len(val), run.config.keep))
    return calibrate_export(fields, onnx_path, held_out, test)


def train_and_export(
    args: argparse.Namespace, config: TrainConfig, feedback: Split | None = None
) -> Trained | None:
    """Train ``config``, test, export. Returns the card's fields on rank 0; under torchrun the
    other ranks only train, and get None. With ``--resume`` the checkpoint's recipe is used.
    ``feedback``: labelled traffic (the retrain job's) added to the training images."""
    from training.checkpoint import weights_sha256
    from training.distributed import start
    from training.export import card_fields
    from training.train import (
        read_resume_config,
        resolve_device,
        run_training,
        split_data,
        train_model,
    )

    resume: Path | None = args.resume
    if resume is not None:  # the run's recipe; threads and device belong to this machine
        recipe = read_resume_config(resume)
        config = dataclasses.replace(recipe, threads=config.threads, device=config.device)
    world: World = args.world
    start(world, resolve_device(config.device))
    data = load_data(args)
    if feedback is not None:
        data = dataclasses.replace(data, feedback=feedback)
    if not world.is_main:
        fit, val, _ = split_data(config, data)
        result = train_model(config, fit, val, world=world, resume=resume)
        print(f"{world.label()}: weights sha256 {weights_sha256(result.model)}", flush=True)
        return None
    run_dir = (
        resume.parent
        if resume is not None
        else args.runs_dir / f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run = run_training(config, data, run_dir, world=world, resume=resume)
    if world.distributed:  # every rank prints its hash: they must agree
        print(f"{world.label()}: weights sha256 {weights_sha256(run.model)}", flush=True)
    test = data.test.sample(config.limit_test, config.seed)
    onnx_path, parity = export_run(run, test)
    print(f"Run files: {run_dir}")
    fields = calibrate_run(run, data, test, onnx_path, card_fields(run, onnx_path, parity))
    return run, test, onnx_path, fields
