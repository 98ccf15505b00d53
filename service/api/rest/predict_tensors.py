"""The v1 ``:predict`` body for a tensor model, as TF Serving takes a multi-input signature.

Row format: ``{"instances": [{"INPUT0": [...], "INPUT1": [...]}, ...]}``, one object per batch
row naming every input (a one-input model may give the bare value); answered as
``{"predictions": [...]}``, one object per row naming every output (the bare value for one).
Columnar format: ``{"inputs": {"INPUT0": [[...]], ...}}``, each input whole with its batch axis
(a one-input model may give the bare value); answered as ``{"outputs": {...}}`` likewise. A model
without a batch axis takes the columnar format only. Each value is checked as the v2 codec
checks a tensor, then the data plane checks it against the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.rest.http_io import validated_body
from service.api.rest.json_wire import dumps, dumps_in_slices, loads_object
from service.api.rest.schemas import PREDICT_FIELDS, PredictRequest
from service.api.tensors import array_from_json, bytes_strings
from service.core.card import DEFAULT_SIGNATURE, TensorSpec
from service.core.errors import InvalidInput, PayloadTooLarge
from service.dataplane.types import InputTensor


def decode_predict_tensors_body(
    raw: bytes, inputs: Sequence[TensorSpec], batched: bool, signature_name: str, max_rows: int
) -> tuple[list[InputTensor], bool]:
    """A tensor model's ``:predict`` body as its inputs (``predict_tensors``), parsed and checked
    once; module-level, as ``predict.decode_predict_body``, for the work pool's child."""
    body = validated_body(PredictRequest, loads_object(raw, PREDICT_FIELDS))
    return predict_tensors(body, inputs, batched, signature_name, max_rows)


def _nesting(value: Any) -> list[int]:
    """The shape a nested JSON array claims, read along its first elements (checked after)."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    if isinstance(value, np.ndarray):  # ``loads_object`` makes arrays of plain number lists
        shape += value.shape
    return shape


def _array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    return array_from_json(value, spec.datatype, _nesting(value), where, nested=True)


def _by_name(value: Any, specs: Sequence[TensorSpec], where: str) -> dict[str, Any]:
    """``{"<input>": value, ...}`` naming every input (a bare value for a one-input model)."""
    names = [s.name for s in specs]
    if not isinstance(value, Mapping):
        if len(specs) == 1:
            return {names[0]: value}
        raise InvalidInput(f"{where} must be an object naming the model's inputs {names}")
    unknown = [k for k in value if k not in names]
    missing = [n for n in names if n not in value]
    if unknown or missing:
        raise InvalidInput(
            f"{where} must name the model's inputs {names}"
            + (f"; unknown: {unknown}" if unknown else "")
            + (f"; missing: {missing}" if missing else "")
        )
    return dict(value)


def _rows(instances: list[Any], specs: Sequence[TensorSpec]) -> list[InputTensor]:
    """Row format: each input's rows stacked along a new leading (batch) axis."""
    named = [_by_name(x, specs, f"instance {i}") for i, x in enumerate(instances)]
    tensors = []
    for spec in specs:
        rows = [_array(x[spec.name], spec, f"instance {i} input {spec.name!r}")
                for i, x in enumerate(named)]  # fmt: skip
        if len({r.shape for r in rows}) != 1:
            raise InvalidInput(f"input {spec.name!r}: the instances' shapes differ")
        data = np.stack(rows)
        tensors.append(InputTensor(spec.name, spec.datatype, list(data.shape), data))
    return tensors


def predict_tensors(
    body: PredictRequest,
    specs: Sequence[TensorSpec],
    batched: bool,
    signature_name: str,
    max_rows: int,
) -> tuple[list[InputTensor], bool]:
    """A validated ``:predict`` body as the model's input tensors, and whether it came in the
    row format (which the answer keeps)."""
    signature = body.signature_name
    if signature is not None and signature not in (signature_name, DEFAULT_SIGNATURE):
        raise InvalidInput(f"unknown signature_name {signature!r}; this model has one signature")
    if body.top_k is not None:
        raise InvalidInput("top_k needs an image classifier; this is a tensor model")
    given = body.model_fields_set
    if ("instances" in given) == ("inputs" in given):
        raise InvalidInput("give 'instances' (row format) or 'inputs' (columnar format), one")
    if "inputs" in given:
        values = _by_name(body.inputs, specs, "'inputs'")
        tensors = []
        for spec in specs:
            data = _array(values[spec.name], spec, f"input {spec.name!r}")
            tensors.append(InputTensor(spec.name, spec.datatype, list(data.shape), data))
        return tensors, False
    instances = body.instances
    if not batched:
        raise InvalidInput("this model has no batch axis: send 'inputs' (columnar format)")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"{len(instances)} instances, more than the limit of {max_rows}")
    return _rows(instances, specs), True


def _json_value(array: np.ndarray) -> Any:
    """An output as JSON writes it: numbers as numpy (orjson writes them nested as they are),
    BYTES as nested lists of strings."""
    if array.dtype.hasobject:  # BYTES: strings, as TF Serving answers them
        strings = np.empty(array.size, dtype=object)
        strings[:] = bytes_strings(array)
        return strings.reshape(array.shape).tolist()
    return array


def encoded_answer(
    name: str, version: str, outputs: Mapping[str, np.ndarray], rows: bool, sliced: bool
) -> bytes:
    """``predict_answer`` as the JSON answer of model ``name``; ``sliced``: its numbers written
    a slice at a time (``dumps_in_slices``), for a large one written on the work pool."""
    answer = {"model_name": name, "model_version": version, **predict_answer(outputs, rows)}
    return dumps_in_slices(answer) if sliced else dumps(answer)


def predict_answer(outputs: Mapping[str, np.ndarray], rows: bool) -> dict[str, Any]:
    """TF Serving's answer: ``predictions`` per row (row format) or ``outputs`` whole."""
    if not rows:
        whole = {name: _json_value(a) for name, a in outputs.items()}
        return {"outputs": next(iter(whole.values())) if len(whole) == 1 else whole}
    count = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    per_output = {name: _json_value(a) for name, a in outputs.items()}
    return {"predictions": [{n: v[i] for n, v in per_output.items()} for i in range(count)]}
