"""Export to ONNX and the parity gate: onnxruntime must agree with PyTorch before anything ships.

The graph takes uint8 ``images`` [N, 32, 32, 3] RGB and does its own scaling; it returns
``logits`` and ``probabilities`` float32 [N, 10].
"""

from __future__ import annotations

import os
import platform
import subprocess
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.core.card import TensorSpec, sha256_file
from service.core.errors import ExportError
from service.core.shapes import layer_table
from training.architectures import ARCHITECTURES, INPUT_SHAPE
from training.data import CLASS_NAMES, IMAGE_SHAPE
from training.model import Classifier, ExportedClassifier
from training.train import TrainingRun, predict_logits

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
PARITY_IMAGES = 256
PARITY_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch

INPUTS = [TensorSpec(INPUT_NAME, "UINT8", [-1, *IMAGE_SHAPE])]
OUTPUTS = [TensorSpec(name, "FP32", [-1, len(CLASS_NAMES)]) for name in OUTPUT_NAMES]
PREPROCESSING = {
    "input": "uint8 RGB pixels, NHWC [N, 32, 32, 3], as decoded from an image file",
    "in_graph": "Transpose to NCHW, Cast to float32, divide by 255 (pixels in [0, 1])",
    "client": "resize to 32x32 RGB; no scaling or normalisation needed",
}


TTA_VIEWS = {
    "flip": "the image and its horizontal mirror, logits averaged (1/2 each)",
    "flip-translate": "the image and its mirror (1/4 each), and both shifted one pixel up-left "
    "and one pixel down-right with reflected borders (1/8 each): 6 views, logits averaged",
}


def preprocessing(tta: str) -> dict[str, str]:
    """The card's preprocessing, with the test-time augmentation views when the graph has them."""
    if tta == "none":
        return dict(PREPROCESSING)
    return {
        **PREPROCESSING,
        "test_time_augmentation": f"in the graph, on the uint8 pixels: {TTA_VIEWS[tta]}; the "
        "views run as one batch through the network (Gather, Concat, Slice), batch axis kept",
    }


def export_onnx(model: Classifier, path: Path, opset: int = OPSET) -> None:
    """Trace the classifier with a dynamic batch axis and check the graph with the ONNX checker."""
    wrapped = ExportedClassifier(model.cpu()).eval()
    example = torch.zeros((2, *INPUT_SHAPE), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "N"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            dynamo=False,  # keeps module paths (conv2d_1, dense...) in the node names
        )
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: the ONNX checker refused the graph: {exc}") from None


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_logit_diff: float
    top1_agreement: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance and self.top1_agreement == 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "top1_agreement": self.top1_agreement,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def check_parity(
    model: Classifier, onnx_path: Path, images: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> Parity:
    """Run the same images through PyTorch and onnxruntime; raise ``ExportError`` if they differ."""
    images = images[:PARITY_IMAGES]
    expected = predict_logits(model.cpu(), images)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    diff = float(np.abs(logits - expected).max()) if len(images) else 0.0
    agree = float((logits.argmax(1) == expected.argmax(1)).mean()) if len(images) else 1.0
    parity = Parity(len(images), diff, agree, tolerance)
    if not parity.passed or not np.allclose(probabilities.sum(1), 1.0, atol=1e-5):
        raise ExportError(
            f"parity gate failed on {len(images)} images: max |logit diff| {diff:.3g} "
            f"(allowed {tolerance:g}), top-1 agreement {agree:.4f} (required 1.0); "
            "nothing published"
        )
    return parity


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with ``-dirty`` when it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def card_fields(run: TrainingRun, onnx_path: Path, parity: Parity) -> dict[str, Any]:
    """Everything in the card except name and version, which publishing decides."""
    layers = ARCHITECTURES[run.config.arch]
    return {
        "class_names": list(CLASS_NAMES),
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "sha256": sha256_file(onnx_path),
        "preprocessing": preprocessing(run.config.tta),
        "architecture": {
            "name": run.config.arch,
            "input_shape": list(INPUT_SHAPE),
            "layers": layers,
        },
        "layer_table": layer_table(INPUT_SHAPE, layers).as_dict(),
        "metrics": {
            "test_accuracy": run.test.accuracy,
            "test_loss": run.test.loss,
            "per_class_accuracy": run.test.per_class_accuracy,
            "confusion_matrix": run.test.confusion,
            "most_confident_mistakes": run.test.mistakes,
            "best_epoch": run.best_epoch,
            "parity": parity.as_dict(),
        },
        "training": {
            "config": run.config.to_dict(),
            "history": run.history,
            "seconds": run.seconds,
            "hardware": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
            f"device {run.config.device}",
        },
        "dataset": run.dataset,
        "libraries": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": _version("pillow"),
        },
        "git_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
