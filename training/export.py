"""Export to ONNX, and the card's fields: what the graph takes and gives, and the evidence.

The parity gate (``evaluation.check_parity``) runs before anything ships.

The graph takes uint8 ``images`` [N, 32, 32, 3] RGB and does its own scaling; it returns
``logits`` and ``probabilities`` float32 [N, 10].
"""

from __future__ import annotations

import os
import platform
import subprocess
import warnings
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
from training.checkpoint import TrainingRun
from training.data import CLASS_NAMES, IMAGE_SHAPE
from training.evaluation import INPUT_NAME, OUTPUT_NAMES, Parity
from training.model import Classifier, ExportedClassifier

OPSET = 17

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
    graph = onnx.load(str(path))
    if own_initializers(graph):
        onnx.save(graph, str(path))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: the ONNX checker refused the graph: {exc}") from None


def own_initializers(model: onnx.ModelProto) -> int:
    """Give back each layer its own weights where the exporter stored equal tensors once and fed
    the other layers through ``Identity`` nodes; returns how many it restored.

    Equal tensors are common: every batch norm without a learned scale holds ones, and untrained
    Dirac filters are equal. The service reads each layer's parameters from its initializers.
    """
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept, restored = [], 0
    for node in graph.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else None
        if source in stored and node.output[0] not in outputs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(stored[source])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            restored += 1
        else:
            kept.append(node)
    if restored:
        del graph.node[:]
        graph.node.extend(kept)
    return restored


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
    test = run.test
    assert test is not None, "a run gets its card once it has been tested"
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
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "per_class_accuracy": test.per_class_accuracy,
            "confusion_matrix": test.confusion,
            "most_confident_mistakes": test.mistakes,
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
