"""What a model takes from a request: its one input as a uint8 image batch, checked against the
model (input name, outputs, shape, pixel range) before the request joins the batch queue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.errors import UnprocessableInput
from service.dataplane.types import InputTensor
from service.engine.runtime import ModelRuntime


def model_pixels(
    runtime: ModelRuntime, inputs: Sequence[InputTensor], requested: Sequence[str]
) -> np.ndarray:
    """The one image batch a request gives the model, after checking it names the model's
    input and only outputs the model has."""
    if len(inputs) != 1 or inputs[0].name != runtime.input.name:
        given = [t.name for t in inputs]
        raise UnprocessableInput(
            f"model {runtime.name!r} takes one input {runtime.input.name!r}, "
            f"the request gives {given}"
        )
    unknown = sorted(set(requested) - set(runtime.output_names))
    if unknown:
        raise UnprocessableInput(
            f"unknown output(s) {unknown}; model {runtime.name!r} has {runtime.output_names}"
        )
    return to_pixels(inputs[0], runtime.image_shape)


def to_pixels(tensor: InputTensor, image_shape: Sequence[int]) -> np.ndarray:
    """An image batch for the graph: UINT8 as is, FP32/FP16 in 0..1 rounded to 0..255."""
    where = f"input {tensor.name!r}"
    expected = [-1, *image_shape]
    if len(tensor.shape) != len(expected) or tensor.shape[1:] != list(image_shape):
        raise UnprocessableInput(f"{where}: shape {tensor.shape} does not fit {expected}")
    if tensor.shape[0] < 1:
        raise UnprocessableInput(f"{where}: the batch is empty")
    data = tensor.data
    if tensor.datatype == "UINT8":
        return data
    if tensor.datatype in ("FP32", "FP16"):
        # NaN fails both comparisons and an infinity one of them: no isfinite pass is needed.
        if not (data.min() >= 0.0 and data.max() <= 1.0):
            raise UnprocessableInput(f"{where}: {tensor.datatype} pixels must lie in 0..1")
        scaled = np.multiply(data, np.float32(255.0), dtype=np.float32)  # one new array, reused
        pixels: np.ndarray = np.rint(scaled, out=scaled).astype(np.uint8)
        return pixels
    raise UnprocessableInput(f"{where}: datatype {tensor.datatype!r} is not UINT8 or FP32 pixels")
