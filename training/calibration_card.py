"""The card's calibration evidence, made by every export (train, retrain, export, quantize) and by
``python -m training recalibrate``, from the same function ``calibrate``:

- ``calibration``: T, the slice it was fitted on, ECE before/after and the reliability bins on the
  test split, the accuracy/coverage table of ``ABSTAIN_BELOW`` thresholds, and ``reliability.png``
- ``reference``: what the calibrated model predicts on the test split, for the monitor's drift
- ``metrics.test_accuracy_jpeg_q50`` / ``_q30``: the test split re-encoded by Pillow at quality 50
  and 30, the shift real uploads bring.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.core.card import sha256_file
from service.core.errors import DataError
from service.core.quality import expected_calibration_error, reference, reliability
from training.calibration import (
    check_temperature_graph,
    fit_temperature,
    nll,
    run_both,
    softmax,
    with_temperature,
)
from training.data import CLASS_NAMES, Cifar10, Split
from training.evaluation import onnx_logits

RELIABILITY_FILE = "reliability.png"  # beside card.json in the version folder
COVERAGE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
JPEG_QUALITIES = (50, 30)


@dataclass(frozen=True)
class HeldOut:
    """The images T is fitted on (None: the model had no held-out slice) and, for the card's
    ``fitted_on``, which they are."""

    split: Split | None
    description: str


def held_out_description(dataset: dict[str, Any], n: int, keep: str = "best") -> str:
    """``fitted_on`` for a run's validation slice, from the card's ``dataset`` block; ``keep``:
    whether that slice also chose the kept epoch (``best``, the default before the option)."""
    how = dataset.get("validation") or f"{n} images held out of the train split"
    use = (
        "never trained on, though it chose the kept epoch"
        if keep == "best"
        else "never trained on, nor used to choose the weights (the last epoch was kept)"
    )
    return f"the training run's validation slice ({how}): {n} images, {use}; not the test split"


def coverage(
    confidence: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] = COVERAGE_THRESHOLDS
) -> list[dict[str, float]]:
    """For each ``abstain_below`` threshold: the share of images answered (top-1 probability at
    or over it) and the accuracy on those (1.0 when none are answered: nothing was wrong)."""
    rows = []
    for t in thresholds:
        answered = confidence >= t
        n = int(answered.sum())
        rows.append(
            {
                "abstain_below": float(t),
                "coverage": n / len(confidence) if len(confidence) else 0.0,
                "accuracy": float(correct[answered].mean()) if n else 1.0,
            }
        )
    return rows


def reencode(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 NHWC images through one Pillow JPEG pass at ``quality`` (4:2:0, as
    ``training/recompress.py`` writes its copies)."""
    out = np.empty_like(images)
    for i, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            out[i] = np.asarray(image.convert("RGB"))
    return out


def jpeg_metrics(onnx_path: Path, test: Split) -> dict[str, float]:
    """``test_accuracy_jpeg_q50`` and ``_q30``: accuracy by onnxruntime on the re-encoded test."""
    return {
        f"test_accuracy_jpeg_q{q}": float(
            (onnx_logits(onnx_path, reencode(test.images, q)).argmax(1) == test.labels).mean()
        )
        for q in JPEG_QUALITIES
    }


def _summary(probabilities: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[bool]]:
    confidence = probabilities.max(axis=1).tolist()
    correct = (probabilities.argmax(axis=1) == labels).tolist()
    return confidence, correct


def calibrate(
    source: Path, dest: Path, held_out: HeldOut, test: Split, diagram: Path
) -> dict[str, Any]:
    """Fit T on ``held_out``, write ``source`` with T inside to ``dest`` (may be the same file),
    check it, draw ``diagram``; returns the card's new blocks ``{"calibration", "reference",
    "metrics"}`` (``metrics``: the JPEG accuracies, to merge into the card's metrics)."""
    from training.plots import plot_reliability  # matplotlib only when a card is made

    if held_out.split is not None:
        val_logits = onnx_logits(source, held_out.split.images)
        temperature = float(np.float32(fit_temperature(val_logits, held_out.split.labels)))
    else:
        temperature = 1.0  # nothing held out to fit on: the graph's probabilities as they were
    tmp = dest.with_name(f".{dest.name}.calibrating")
    try:
        with_temperature(source, tmp, temperature)
        check_temperature_graph(source, tmp, test.images[:1000], temperature)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logits, probabilities = run_both(dest, test.images)
    before = _summary(softmax(logits), test.labels)
    after = _summary(probabilities, test.labels)
    ece_before = expected_calibration_error(*before)
    ece_after = expected_calibration_error(*after)
    bins = [vars(b) for b in reliability(*after)]
    plot_reliability([vars(b) for b in reliability(*before)], bins, ece_before, ece_after, diagram)
    confidence, correct = np.asarray(after[0]), np.asarray(after[1])
    calibration = {
        "temperature": temperature,
        "fitted_on": held_out.description,
        "n_fit": len(held_out.split) if held_out.split is not None else 0,
        "ece_before": ece_before,
        "ece_after": ece_after,
        "test_nll_before": nll(logits, test.labels),
        "test_nll_after": nll(logits, test.labels, temperature),
        "reliability_diagram": diagram.name,
        "reliability": bins,
        "coverage": coverage(confidence, correct),
    }
    top1 = probabilities.argmax(axis=1).tolist()
    return {
        "calibration": calibration,
        "reference": reference(top1, after[0], len(CLASS_NAMES)),
        "metrics": jpeg_metrics(dest, test),
    }


def add_to_card(fields: dict[str, Any], blocks: dict[str, Any], onnx_path: Path) -> None:
    """Put ``calibrate``'s blocks into a card's fields, with the calibrated graph's hash."""
    fields["sha256"] = sha256_file(onnx_path)
    fields["calibration"] = {**fields.get("calibration", {}), **blocks["calibration"]}
    fields["reference"] = blocks["reference"]
    fields["metrics"] = {**fields.get("metrics", {}), **blocks["metrics"]}


def held_out_of(card: dict[str, Any], data: Cifar10) -> HeldOut:
    """The validation slice a published model's run held out of the train split, rebuilt exactly
    as ``training.train.split_data`` chose it from the card's recipe (limit, size, seed)."""
    from training.config import TrainConfig
    from training.train import split_data

    config = card.get("training", {}).get("config") or {}
    dataset = card.get("dataset", {})
    if not config.get("val_size"):
        return HeldOut(None, "nothing: the card records no validation slice, so T = 1")
    if dataset.get("sha256") != data.identity.get("sha256"):
        raise DataError(
            f"{data.identity.get('root')}: not the data set the model was trained on (sha256 "
            f"{data.identity.get('sha256')}, the card says {dataset.get('sha256')}); its "
            "validation slice cannot be rebuilt"
        )
    recipe = replace(
        TrainConfig(),
        limit_train=int(config.get("limit_train", 0)),
        val_size=int(config["val_size"]),
        seed=int(config.get("seed", 0)),
    )
    _, val, _ = split_data(recipe, data)
    if dataset.get("n_val") not in (None, len(val)):
        raise DataError(f"rebuilt {len(val)} validation images; the card says {dataset['n_val']}")
    return HeldOut(val, held_out_description(dataset, len(val), str(config.get("keep", "best"))))


def test_of(card: dict[str, Any], data: Cifar10) -> Split:
    """The test images the card's metrics were measured on (the whole split unless limited)."""
    config = card.get("training", {}).get("config") or {}
    return data.test.sample(int(config.get("limit_test", 0)), int(config.get("seed", 0)))


def calibrate_export(
    fields: dict[str, Any], onnx_path: Path, held_out: HeldOut, test: Split
) -> dict[str, Any]:
    """What an export does after the parity gate: T into ``onnx_path`` (in place), the blocks
    into ``fields``, ``reliability.png`` beside the graph (``publish`` copies it). Returns
    ``fields``."""
    blocks = calibrate(onnx_path, onnx_path, held_out, test, onnx_path.parent / RELIABILITY_FILE)
    add_to_card(fields, blocks, onnx_path)
    c = fields["calibration"]
    print(
        f"Calibration: T = {c['temperature']:.4f} on {c['n_fit']} held-out images; test ECE "
        f"{c['ece_before']:.4f} -> {c['ece_after']:.4f}; JPEG q50/q30 accuracy "
        f"{fields['metrics']['test_accuracy_jpeg_q50']:.4f}/"
        f"{fields['metrics']['test_accuracy_jpeg_q30']:.4f}"
    )
    return fields
