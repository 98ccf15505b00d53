"""Scoring a model, in one place: logits from PyTorch or from the exported graph in onnxruntime,
accuracy, per-class accuracy, the confusion matrix and the most confident mistakes, the parity
gate between PyTorch and onnxruntime, and the INT8 graph against its float original."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from service.core.errors import ExportError
from training.data import CLASS_NAMES, Split
from training.model import Classifier

INPUT_NAME = "images"  # the graph's tensors: the export's contract with the service
OUTPUT_NAMES = ("logits", "probabilities")
PARITY_IMAGES = 256
PARITY_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    mistakes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The most confident wrong answers: image index, true and predicted class, confidence."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion,
            "most_confident_mistakes": self.mistakes,
        }


@torch.no_grad()
def predict_logits(
    model: Classifier, images: np.ndarray, batch_size: int = 500, *, bf16: bool = False
) -> np.ndarray:
    """Logits for uint8 NHWC images, in eval mode, on the model's device.

    ``bf16``: under autocast, twice as fast on this CPU; used for the per-epoch validation score
    of a bf16 run, never for the test figure (the exported graph computes in float32).
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = [
            model(torch.from_numpy(images[i : i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


MISTAKES_SHOWN = 24


def confident_mistakes(
    logits: np.ndarray, labels: np.ndarray, n: int = MISTAKES_SHOWN
) -> list[dict[str, Any]]:
    """The ``n`` wrong predictions made with the highest softmax probability, most sure first."""
    probabilities = torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy()
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")[:n]]
    return [
        {
            "index": int(i),
            "true": CLASS_NAMES[int(labels[i])],
            "predicted": CLASS_NAMES[int(predicted[i])],
            "confidence": round(float(confidence[i]), 4),
        }
        for i in worst
    ]


def evaluate_logits(logits: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Loss, accuracy, per-class accuracy, confusion matrix and the most confident mistakes, from
    torch or onnxruntime logits."""
    n_classes = len(CLASS_NAMES)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item())
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    totals = confusion.sum(axis=1)
    per_class = {
        name: float(confusion[i, i] / totals[i]) if totals[i] else 0.0
        for i, name in enumerate(CLASS_NAMES)
    }
    return Evaluation(
        loss,
        float((predicted == labels).mean()),
        per_class,
        confusion.tolist(),
        confident_mistakes(logits, labels),
    )


def evaluate(
    model: Classifier, split: Split, batch_size: int = 500, *, bf16: bool = False
) -> Evaluation:
    return evaluate_logits(predict_logits(model, split.images, batch_size, bf16=bf16), split.labels)


def onnx_logits(path: Path, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """A graph's logits for uint8 NHWC images, run by onnxruntime as the service would."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def evaluate_onnx(path: Path, split: Split, batch_size: int = 500) -> Evaluation:
    """Score a published graph with onnxruntime, as the service would run it."""
    return evaluate_logits(onnx_logits(path, split.images, batch_size), split.labels)


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


@dataclass(frozen=True)
class QuantizationCheck:
    """The INT8 graph against its float original, on the same test images."""

    images: int
    float_accuracy: float
    int8_accuracy: float
    top1_agreement: float
    max_drop: float

    @property
    def drop(self) -> float:
        return self.float_accuracy - self.int8_accuracy

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}


def compare(
    float_path: Path, int8_path: Path, test: Split, max_drop: float
) -> tuple[QuantizationCheck, Evaluation]:
    """Score both graphs on ``test``; the INT8 graph's full evaluation goes into its card."""
    float_logits = onnx_logits(float_path, test.images)
    int8_logits = onnx_logits(int8_path, test.images)
    int8 = evaluate_logits(int8_logits, test.labels)
    check = QuantizationCheck(
        images=len(test),
        float_accuracy=evaluate_logits(float_logits, test.labels).accuracy,
        int8_accuracy=int8.accuracy,
        top1_agreement=float((float_logits.argmax(1) == int8_logits.argmax(1)).mean()),
        max_drop=max_drop,
    )
    return check, int8
