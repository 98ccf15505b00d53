"""The v2 infer body <-> the data plane's ``InferRequest`` and ``InferResponse``: Open Inference
Protocol JSON and its binary tensor extension, REST's one codec.

Shape, datatype and length are checked here, once (``service.api.tensors``), before a request
reaches a model; a bad request is refused with a message naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.api.rest.json_wire import (
    dumps,
    dumps_in_slices,
    json_object,
    lazy_document,
    loads_infer_request,
)
from service.api.rest.plain_body import plain_request
from service.api.tensors import (
    array_from_bytes,
    array_from_json,
    check_datatype,
    tensor_json,
)
from service.core.classification import PARAMETER, check_class_count
from service.core.errors import InvalidInput, UnprocessableInput
from service.core.limits import (
    check_json_values,
    check_tensor_count,
    check_tensor_name,
    checked_shape,
    value_bound,
)
from service.core.timeouts import check_timeout_us
from service.core.version_policy import body_version
from service.dataplane.shared_memory import shared_memory_ref
from service.dataplane.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    RequestedOutput,
)
from service.engine.dtypes import DATATYPE_NAMES, NUMPY_DTYPES
from service.engine.tensor_bytes import tensor_to_bytes

# The fields of a v2 infer request (the protocol's, and the model_name / model_version that the
# KServe SDK's REST client writes into the body), its input tensors and its requested outputs.
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})


def _parameters(value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    return json_object(value.get("parameters", {}), f"{where}.parameters")


def _shape(value: Any, where: str, max_rows: int, most: int | None = None) -> list[int]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where}.shape must be a list of integers")
    return checked_shape(value, where, max_rows, most)


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    max_rows: int,
    max_values: int | None = None,
    bounds: Mapping[str, int] | None = None,
) -> InferRequest:
    """A v2 infer body: JSON, or a JSON header and raw tensor bytes (the binary extension).
    With ``max_values`` (what ``max_rows`` rows of the model's inputs hold), JSON holding more
    values is refused before it is parsed (``check_json_values``). With ``bounds`` (each input's
    most BYTES elements, ``limits.value_bounds``), a BYTES input's shape is held to them before
    its bytes are split element by element (4 bytes an element buy 0.6 us of Python each), or
    read from shared memory."""
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} does not fit the "
                f"{len(body)}-byte body"
            )
        body, binary = body[:header_length], body[header_length:]
    if max_values is not None:
        check_json_values(body, max_values, f"{max_rows} rows of the model's inputs")
    doc = lazy_document(body)
    if doc is not None and not binary:  # the common form, checked in one pass
        plain = plain_request(doc, max_rows)
        if plain is not None:
            return plain
    raw = loads_infer_request(body, doc)
    del doc  # simdjson's parse of a large body is not held while its tensors are made
    request = json_object(raw, "the request", REQUEST_FIELDS, ignore_unknown=True)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    model_name = request.get("model_name")
    if model_name is not None and not isinstance(model_name, str):
        raise InvalidInput("'model_name' must be a string")
    parameters = _parameters(request, "the request")
    binary_output = parameters.get("binary_data_output") is True
    outputs, class_counts = _requested_outputs(request.get("outputs", []), binary_output)
    return InferRequest(
        request_id,
        _input_tensors(request.get("inputs"), binary, max_rows, bounds or {}),
        outputs,
        binary_output,
        model_name or None,
        body_version(request.get("model_version")),
        check_timeout_us(parameters.get("timeout", 0)),
        class_counts,
    )


def _input_tensors(
    raw_inputs: Any, binary: bytes, max_rows: int, bounds: Mapping[str, int]
) -> list[InputTensor]:
    """The request's input tensors; binary ones take their bytes from ``binary`` in order."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    check_tensor_count(len(raw_inputs), "inputs")
    inputs: list[InputTensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        tensor = json_object(raw, where, TENSOR_FIELDS)
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name must be a non-empty string")
        check_tensor_name(name, "an input")
        where = f"input {name!r}"
        datatype = check_datatype(datatype, where)
        most = value_bound(bounds, name) if datatype == "BYTES" else None
        shape = _shape(tensor.get("shape"), where, max_rows, most)
        parameters = _parameters(tensor, where)
        size = parameters.get("binary_data_size")
        region = shared_memory_ref(parameters, where)
        if region is not None:  # read by the data plane
            if size is not None or "data" in tensor:
                raise InvalidInput(f"{where}: data given as well as a shared memory region")
            empty = np.empty(0, NUMPY_DTYPES[datatype])
            inputs.append(InputTensor(name, datatype, shape, empty, region))
            continue
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            data = array_from_bytes(
                binary[offset : offset + size], datatype, shape, where, declared=size
            )
            offset += size
        else:
            data = array_from_json(tensor.get("data"), datatype, shape, where)
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise UnprocessableInput(
            f"the body carries {len(binary) - offset} bytes of binary data no input claims"
        )
    return inputs


def _requested_outputs(
    raw_outputs: Any, binary_output: bool
) -> tuple[list[RequestedOutput], dict[str, int]]:
    """The outputs asked for and, by name, the classes each classification should answer."""
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list")
    check_tensor_count(len(raw_outputs), "outputs")
    outputs: list[RequestedOutput] = []
    class_counts: dict[str, int] = {}
    for i, raw in enumerate(raw_outputs):
        out = json_object(raw, f"outputs[{i}]", OUTPUT_FIELDS)
        name = out.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{i}].name must be a non-empty string")
        check_tensor_name(name, "an output")
        parameters = _parameters(out, f"outputs[{i}]")
        flag = parameters.get("binary_data", binary_output)
        region = shared_memory_ref(parameters, f"output {name!r}")
        outputs.append(RequestedOutput(name, flag is True and region is None, region))
        if PARAMETER in parameters:
            class_counts[name] = check_class_count(parameters[PARAMETER], name)
    return outputs, class_counts


def encode_infer_response(
    response: InferResponse, binary: Mapping[str, bool], sliced: bool = False
) -> tuple[bytes, int | None]:
    """The v2 response body and, when some output is binary, the JSON header's length;
    ``sliced``: its numbers written a slice at a time (``dumps_in_slices``), for a large answer
    written on the work pool."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPE_NAMES[array.dtype],
            "shape": list(array.shape),
        }
        region = response.shared_memory.get(name)
        if region is not None:  # written there: its parameters, no data (Triton's answer)
            tensor["parameters"] = region.parameters()
        elif binary.get(name):
            raw = tensor_to_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = tensor_json(array)
        tensors.append(tensor)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": tensors,
    }
    if response.id is not None:
        body["id"] = response.id
    header = dumps_in_slices(body) if sliced else dumps(body)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def model_metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    """The v2 model metadata body (``schemas.ModelMetadata`` documents it); what the protocol's
    fields have no room for goes in ``parameters``."""
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": [vars(t) for t in meta.inputs],
        "outputs": [vars(t) for t in meta.outputs],
        "parameters": {
            "kind": meta.kind,
            "execution_providers": meta.execution_providers,
            "class_names": meta.class_names,
        },
    }
