"""Training command line.

python -m training train --data data/cifar10-jpeg            # train, test, export, publish
python -m training train --recipe cifar_94 --seed 1          # a named recipe, one field changed
python -m training retrain --data data/cifar10-jpeg          # the same, behind a quality gate
python -m training retrain --recipe lecture --feedback data/service/predictions.sqlite3
                                              # also trained and judged on labelled traffic
python -m training export --checkpoint runs/<run>/checkpoint.pt --data data/cifar10-jpeg
python -m training evaluate --model models/cifar10_cnn/1 --data data/cifar10-jpeg [--mistakes m.png]
python -m training quantize --model models/cifar10_cnn_bn/1 --name cifar10_cnn_bn_int8
python -m training summary [--arch lecture]                    # the Keras-style layer table
python -m training train --resume runs/<run>/last.pt           # carry on an interrupted run
torchrun --nproc-per-node=2 -m training train --data data/cifar10-jpeg   # data-parallel (DDP)
python -m training ablate no-lookahead                         # cifar_94 without one method
python -m training plot-runs --out chart.png "seed 0=runs/<run>" ...
python -m training recompress data/cifar10-jpeg data/cifar10-jpeg-q50 --quality 50
python -m training recalibrate models/cifar10_cnn_bn/2       # the same weights, T in the graph

Recipes (training/recipes.py): lecture, cifar_bn, cifar_94; without --recipe, the lecture's in
float32.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from service.core.card import MODEL_FILE
from service.core.errors import ServingError
from service.core.shapes import format_table, layer_table
from training.architectures import ARCHITECTURES, INPUT_SHAPE
from training.config import TrainConfig, config_from_args
from training.distributed import barrier, stop, world_from_env
from training.experiments import EXPERIMENT_COMMANDS, add_experiment_commands
from training.feedback import DEFAULT_CAP_PER_CLASS, DEFAULT_HOLDOUT_SHARE
from training.holdout_key import KEY_FILE
from training.pipeline import (
    Trained,
    calibrate_run,
    data_arguments,
    export_run,
    load_data,
    publish_arguments,
    train_and_export,
    training_arguments,
)
from training.recalibrate import add_recalibrate_command, cmd_recalibrate
from training.recipes import RECIPES, recipe
from training.retrain import MIN_HOLDOUT

EXIT_FAILED, EXIT_REJECTED, EXIT_INTERRUPTED = 1, 3, 130


class Rejected(Exception):
    """The quality gate refused the candidate; it was kept aside, not published."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_commands(sub)
    _model_commands(sub)
    add_experiment_commands(sub)
    add_recalibrate_command(sub)
    summary = sub.add_parser("summary", help="print the Keras-style layer table")
    summary.add_argument("--arch", default="lecture", choices=sorted(ARCHITECTURES))
    summary.add_argument("--spec", type=Path, help="JSON file with a list of layer specs instead")
    summary.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser


def _recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="a named recipe (training/recipes.py) whose fields the other flags override "
        "(default: none, TrainConfig's defaults: the lecture's recipe in float32)",
    )


def _train_commands(sub: Any) -> None:
    """``train`` and ``retrain`` (a recipe and its flags, and retrain's quality gate)."""
    train = sub.add_parser("train", help="train, evaluate on the test split, export and publish")
    _recipe_argument(train)
    training_arguments(train)
    train.add_argument("--no-publish", action="store_true", help="train and export, don't publish")

    retrain = sub.add_parser("retrain", help="train and publish only if the quality gate passes")
    _recipe_argument(retrain)
    training_arguments(retrain)
    retrain.add_argument(
        "--min-accuracy",
        type=float,
        default=0.685,
        help="lowest test accuracy that may be published (default: 0.685)",
    )
    retrain.add_argument(
        "--max-regression",
        type=float,
        default=0.01,
        help="how much below the served version's accuracy on the same test images the new "
        "version may be (default: 0.01); on the held-out feedback, this plus 1.96 standard errors",
    )
    _feedback_arguments(retrain)


def _feedback_arguments(retrain: argparse.ArgumentParser) -> None:
    """The prediction log's labelled images for ``retrain`` (training/feedback.py)."""
    retrain.add_argument(
        "--feedback",
        metavar="DB",
        help="the service's prediction log: a SQLite file (DATA_DIR/predictions.sqlite3) or a "
        "SQLAlchemy URL; its labelled, captured images of --name join the training images",
    )
    retrain.add_argument(
        "--feedback-optional",
        action="store_true",
        help="a --feedback file that does not exist yet means no feedback, not an error (the "
        "compose trainer's: the api makes the log on its first answer)",
    )
    retrain.add_argument(
        "--feedback-holdout",
        type=float,
        default=DEFAULT_HOLDOUT_SHARE,
        help="share of feedback images held out of training to judge the candidate, chosen by "
        f"their pixels' hash keyed with --feedback-key (default: {DEFAULT_HOLDOUT_SHARE})",
    )
    retrain.add_argument(
        "--feedback-key",
        type=Path,
        help="the secret file that keys the hold-out's hash, made on first use (default: "
        f"<repository>/{KEY_FILE}); keep it, or the split is drawn anew",
    )
    retrain.add_argument(
        "--feedback-open-labels",
        action="store_true",
        help="also train on labels not given by an admin (FEEDBACK_OPEN's, or from a log made "
        "before it recorded who labelled): anyone's labels then decide what the model learns",
    )
    retrain.add_argument(
        "--feedback-cap",
        type=int,
        default=DEFAULT_CAP_PER_CLASS,
        help="most feedback images per class: admins' first, the rest a keyed sample "
        f"(default: {DEFAULT_CAP_PER_CLASS})",
    )
    retrain.add_argument(
        "--min-holdout",
        type=int,
        default=MIN_HOLDOUT,
        help="fewer held-out feedback images block publishing when feedback was trained on "
        f"(0: never) and decide nothing otherwise (default: {MIN_HOLDOUT})",
    )


def _model_commands(sub: Any) -> None:
    """``export``, ``evaluate`` and ``quantize``: what is done to a trained or published model."""
    export = sub.add_parser("export", help="export a checkpoint, check parity, publish")
    export.add_argument("--checkpoint", type=Path, required=True)
    data_arguments(export)
    publish_arguments(export)

    evaluate = sub.add_parser("evaluate", help="test accuracy of a published model (onnxruntime)")
    evaluate.add_argument("--model", type=Path, required=True, help="version folder or .onnx file")
    evaluate.add_argument("--limit-test", type=int, default=0, help="N random test images (0: all)")
    evaluate.add_argument(
        "--mistakes", type=Path, help="also draw the most confident mistakes into this PNG"
    )
    data_arguments(evaluate)

    quantize = sub.add_parser(
        "quantize", help="static INT8 (QDQ) copy of a published model, kept if accuracy holds"
    )
    quantize.add_argument(
        "--model",
        type=Path,
        required=True,
        help="the float model's version folder, or its model folder for the newest version",
    )
    quantize.add_argument(
        "--calibration-images",
        type=int,
        default=1024,
        help="training images whose activation ranges set the INT8 scales (default: 1024)",
    )
    quantize.add_argument(
        "--max-drop",
        type=float,
        default=0.005,
        help="largest test accuracy loss against the float model that may be published "
        "(default: 0.005, half a point)",
    )
    quantize.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    quantize.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs go")
    data_arguments(quantize)
    publish_arguments(quantize)


def run_config(args: argparse.Namespace) -> TrainConfig:
    """``train`` and ``retrain``'s config: the recipe (or the defaults), the flags given over it."""
    return config_from_args(args, recipe(args.recipe))


def _train(args: argparse.Namespace) -> Trained | None:
    return train_and_export(args, run_config(args))


def cmd_train(args: argparse.Namespace) -> None:
    from training.publish import publish

    trained = _train(args)
    if trained is None:  # not rank 0: rank 0 publishes
        return
    _, _, onnx_path, fields = trained
    if not args.no_publish:
        print(f"Published {publish(args.repository, args.name, onnx_path, fields)}")


def cmd_retrain(args: argparse.Namespace) -> None:
    from training.feedback import read_feedback
    from training.holdout_key import holdout_key
    from training.publish import publish
    from training.retrain import gate_candidate, keep_rejected

    feedback = None
    optional = args.feedback_optional and args.feedback and "://" not in args.feedback
    if optional and not Path(args.feedback).exists():
        print(f"No prediction log at {args.feedback} yet: training without feedback")
        args.feedback = None
    if args.feedback:  # read first: a bad database stops the job before any training
        feedback = read_feedback(
            args.feedback,
            args.name,
            key=holdout_key(args.feedback_key or args.repository / KEY_FILE),
            cap_per_class=args.feedback_cap,
            holdout_share=args.feedback_holdout,
            open_labels=args.feedback_open_labels,
        )
        print(f"Feedback: {json.dumps(feedback.summary)}")
        print(feedback.whose())
    trained = train_and_export(args, run_config(args), feedback.train if feedback else None)
    if trained is None:  # not rank 0: rank 0 gates and publishes
        return
    run, test, onnx_path, fields = trained
    assert run.test is not None
    gate = gate_candidate(
        onnx_path,
        run.test.accuracy,
        args.repository / args.name,
        test,
        feedback.holdout if feedback else None,
        vars(args),
        len(feedback.train) if feedback else 0,
    )
    fields["metrics"]["quality_gate"] = gate.as_dict()
    if feedback is not None:
        fields["training"]["feedback"] = feedback.summary
    if not gate.passed:
        kept = keep_rejected(args.repository, args.name, onnx_path, fields, gate)
        raise Rejected(f"{gate.reason}; nothing published, the candidate is kept in {kept}")
    print(f"Quality gate passed: {gate.reason}")
    print(f"Published {publish(args.repository, args.name, onnx_path, fields)}")


def cmd_export(args: argparse.Namespace) -> None:
    from training.checkpoint import load_run
    from training.evaluation import evaluate
    from training.export import card_fields
    from training.publish import publish

    run = load_run(args.checkpoint)
    data = load_data(args)
    test = data.test.sample(run.config.limit_test, run.config.seed)
    if (
        run.test is None or not run.test.mistakes
    ):  # a checkpoint from before cards listed the mistakes
        run.test = evaluate(run.model, test, run.config.eval_batch_size)
    onnx_path, parity = export_run(run, test)
    fields = calibrate_run(run, data, test, onnx_path, card_fields(run, onnx_path, parity))
    print(f"Published {publish(args.repository, args.name, onnx_path, fields)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.evaluation import evaluate_onnx

    path: Path = args.model / MODEL_FILE if args.model.is_dir() else args.model
    test = load_data(args).test.sample(args.limit_test, 0)
    result = evaluate_onnx(path, test)
    print(json.dumps({"model": str(path), "images": len(test), **result.as_dict()}, indent=2))
    if args.mistakes is not None:
        from training.plots import plot_mistakes

        plot_mistakes(test.images, result.mistakes, args.mistakes)


def cmd_quantize(args: argparse.Namespace) -> None:
    from service.core.card import read_card
    from training.calibration_card import calibrate_export, held_out_of, test_of
    from training.evaluation import compare
    from training.publish import publish, versions
    from training.quantize import int8_card_fields, quantize_int8

    model_dir: Path = args.model
    if not (model_dir / MODEL_FILE).is_file() and versions(model_dir):
        model_dir = model_dir / str(versions(model_dir)[-1])  # a model's folder: its newest
    source = read_card(model_dir)
    data = load_data(args)
    calibration = data.train.sample(args.calibration_images, args.seed)
    out = args.runs_dir / f"{source.name}-{source.version}-int8" / MODEL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_int8(model_dir / MODEL_FILE, out, calibration.images)
    check, evaluation = compare(model_dir / MODEL_FILE, out, data.test, args.max_drop)
    print(
        f"INT8: test accuracy {check.int8_accuracy:.4f} vs float {check.float_accuracy:.4f} "
        f"({check.images} images, top-1 agreement {check.top1_agreement:.4f})"
    )
    if not check.passed:
        raise Rejected(
            f"INT8 loses {check.drop:.4f} test accuracy (allowed {args.max_drop:.4f}); "
            f"nothing published, the graph is in {out}"
        )
    fields = int8_card_fields(
        source,
        out,
        check,
        evaluation,
        {"images": len(calibration), "from": "train split", "seed": args.seed},
    )
    calibrate_export(fields, out, held_out_of(fields, data), test_of(fields, data))
    print(f"Published {publish(args.repository, args.name, out, fields)}")


def cmd_summary(args: argparse.Namespace) -> None:
    layers = json.loads(args.spec.read_text()) if args.spec else ARCHITECTURES[args.arch]
    table = layer_table(INPUT_SHAPE, layers)
    print(json.dumps(table.as_dict(), indent=2) if args.json else format_table(table))


COMMANDS = {
    "train": cmd_train,
    "retrain": cmd_retrain,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "quantize": cmd_quantize,
    "summary": cmd_summary,
    "recalibrate": cmd_recalibrate,
    **EXPERIMENT_COMMANDS,
}


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, kill) unwinds like Ctrl-C, so temporary folders are removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.world = world = world_from_env()
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        COMMANDS[args.command](args)
    except Rejected as exc:
        print(f"rejected by the quality gate: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except ServingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; the repository is unchanged", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        # Under torchrun the other ranks wait here until rank 0 has exported and published.
        if not interrupted:
            barrier(world)
        stop(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
