"""Static INT8 quantization of a published model: onnxruntime's QDQ format, per-channel weights,
activation ranges calibrated on training images.

The quantized graph keeps the contract of the float one (uint8 ``images`` in, float32 ``logits``
and ``probabilities`` out, scaling inside), so the service serves it with no change. It ships only
if its test accuracy stays within ``max_drop`` of the float model's on the same images.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from service.core.card import ModelCard, sha256_file
from service.core.errors import ExportError
from training.evaluation import INPUT_NAME, Evaluation, QuantizationCheck

# Layers with weights or a cheap int8 kernel; the preprocessing (Transpose, Cast, Div on uint8
# pixels) and the GELU's float arithmetic stay as they are.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "MaxPool"]
CALIBRATION_BATCH = 64


class _Batches(CalibrationDataReader):
    """Feeds the calibration images to onnxruntime's calibrator, a batch at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(float_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Write the QDQ INT8 version of ``float_path`` (per-channel int8 weights, uint8 activations
    with min/max ranges seen on ``calibration`` uint8 NHWC images) to ``out_path``."""
    if len(calibration) == 0:
        raise ExportError("INT8 quantization needs calibration images; none were given")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup first, as onnxruntime's quantization guide advises.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            # uint8 activations with int8 weights: the VNNI kernels of x86 (2.2x the float
            # graph's images/s here, where int8 activations ran near float speed)
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    try:
        onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{out_path}: the ONNX checker refused the INT8 graph: {exc}") from None


def int8_card_fields(
    source: ModelCard,
    int8_path: Path,
    check: QuantizationCheck,
    evaluation: Evaluation,
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """The float model's card with the INT8 graph's hash, scores and how it was made."""
    fields = copy.deepcopy(source.to_dict())
    for key in ("name", "version"):
        fields.pop(key, None)
    metrics = fields.setdefault("metrics", {})
    metrics.pop("parity", None)  # the float graph's check against PyTorch; see quantization
    metrics.pop("quality_gate", None)
    metrics.update(
        {
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "per_class_accuracy": evaluation.per_class_accuracy,
            "confusion_matrix": evaluation.confusion,
            "most_confident_mistakes": evaluation.mistakes,
        }
    )
    fields["sha256"] = sha256_file(int8_path)
    fields["quantization"] = {
        "format": "QDQ (onnxruntime.quantization.quantize_static)",
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor, min/max calibration",
        "quantized_ops": QUANTIZED_OPS,
        "source": {"name": source.name, "version": source.version, "sha256": source.sha256},
        "calibration": calibration,
        "check": check.as_dict(),
    }
    return fields
