"""gRPC's messages <-> the data plane's types: ``ModelInferRequest`` to ``InferRequest`` (checked
by the same rules as REST's tensors, ``service.api.tensors``), and ``InferResponse``, metadata and
the repository index to the protocol's published messages (compiled in ``tritonclient.grpc``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from service.api.grpc.extension_codec import timeout_parameter
from service.api.grpc.shared_memory import set_region, tensor_region
from service.api.tensors import (
    array_from_bytes,
    array_from_values,
    check_datatype,
)
from service.core.card import TensorSpec
from service.core.classification import PARAMETER, check_class_count
from service.core.datatypes import DATATYPES
from service.core.errors import InvalidInput, PayloadTooLarge, UnprocessableInput
from service.core.limits import (
    MAX_RANK,
    MAX_TENSORS,
    check_tensor_count,
    check_tensor_name,
    checked_shape,
    value_bound,
)
from service.dataplane.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    RepositoryEntry,
    RequestedOutput,
    ServerMetadata,
    SharedMemoryRef,
)
from service.engine.dtypes import DATATYPE_NAMES, NUMPY_DTYPES
from service.engine.tensor_bytes import tensor_to_bytes

# Typed ``InferTensorContents`` field of each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELDS: dict[str, str] = {
    d.name: d.contents_field for d in DATATYPES.values() if d.contents_field is not None
}
# The numbers of each typed field as protobuf holds them (32-bit fields widen: UINT8 comes in
# uint_contents), checked against the datatype's bounds as an array (``array_from_values``).
FIELD_DTYPES: dict[str, np.dtype[Any]] = {
    field: np.dtype(kind)
    for field, kind in (
        ("bool_contents", "bool"), ("int_contents", "int32"), ("int64_contents", "int64"),
        ("uint_contents", "uint32"), ("uint64_contents", "uint64"),
        ("fp32_contents", "float32"), ("fp64_contents", "float64"),
    )
}  # fmt: skip
TYPED_SLICE = 65_536  # values of a typed field made numpy in one call (about 1 ms here)


def _bytes_tag(message: Any, field: str) -> bytes:
    """The wire tag (one byte: fields 1 to 15) of ``message``'s length-delimited ``field``."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    assert number < 16
    return bytes([number << 3 | 2])


RAW_OUTPUT_TAG = _bytes_tag(service_pb2.ModelInferResponse, "raw_output_contents")
STREAM_ANSWER_TAG = _bytes_tag(service_pb2.ModelStreamInferResponse, "infer_response")


def decode_infer_request(request: Any, max_rows: int) -> InferRequest:
    """A ``ModelInferRequest``'s inputs (all in ``raw_input_contents``, tritonclient's way, or all
    typed; or in shared memory) and requested outputs; the model it names is the caller's to look
    up."""
    check_tensor_count(len(request.outputs), "outputs")
    if not request.inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    check_tensor_count(len(request.inputs), "inputs")
    for tensor in request.inputs:
        check_tensor_name(tensor.name, "an input")
    for output in request.outputs:
        check_tensor_name(output.name, "an output")
    regions = [tensor_region(t.parameters, f"input {t.name!r}") for t in request.inputs]
    raw = request.raw_input_contents
    given = sum(region is None for region in regions)  # inputs whose data the message carries
    if raw and len(raw) != given:
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {given} inputs; give one per input not in "
            "shared memory"
        )
    inputs = []
    raw_index = 0
    for tensor, region in zip(request.inputs, regions, strict=True):
        if region is not None:
            inputs.append(_shared_input(tensor, region, max_rows))
            continue
        values = None if raw else typed_contents(tensor)
        if raw and tensor.HasField("contents"):
            raise InvalidInput(
                f"input {tensor.name!r}: contents given as well as raw_input_contents; give one"
            )
        shape = list(tensor.shape)
        data = raw[raw_index] if raw else None
        raw_index += 1
        inputs.append(_input(tensor.name, tensor.datatype, shape, data, values, max_rows))
    outputs = [
        RequestedOutput(o.name, True, tensor_region(o.parameters, f"output {o.name!r}"))
        for o in request.outputs
    ]
    counts = {o.name: class_count(o) for o in request.outputs if PARAMETER in o.parameters}
    timeout_us = timeout_parameter(request.parameters)
    return InferRequest(request.id, inputs, outputs, timeout_us=timeout_us, class_counts=counts)


def class_count(output: Any) -> int:
    """A requested output's ``classification`` parameter: an ``int64_param``, as tritonclient
    sends it (Triton refuses any other kind), checked by REST's rule."""
    parameter = output.parameters[PARAMETER]
    kind = parameter.WhichOneof("parameter_choice")
    if kind != "int64_param":
        raise InvalidInput(
            f"output {output.name!r}: classification must be an int64_param, not {kind or 'empty'}"
        )
    return check_class_count(parameter.int64_param, output.name)


def _shared_input(tensor: Any, region: SharedMemoryRef, max_rows: int) -> InputTensor:
    """An input the data plane reads from shared memory (no contents of its own)."""
    where = f"input {tensor.name!r}"
    if not tensor.name:
        raise InvalidInput("every input needs a non-empty name")
    if tensor.HasField("contents"):
        raise InvalidInput(f"{where}: contents given as well as a shared memory region")
    datatype = check_datatype(tensor.datatype, where)
    shape = checked_shape(list(tensor.shape), where, max_rows)
    return InputTensor(tensor.name, datatype, shape, np.empty(0, NUMPY_DTYPES[datatype]), region)


def _input(
    name: str,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | None,
    values: list[Any] | np.ndarray | None,
    max_rows: int,
) -> InputTensor:
    """One input tensor given as raw bytes or a flat list of typed values."""
    if not name:
        raise InvalidInput("every input needs a non-empty name")
    where = f"input {name!r}"
    check_datatype(datatype, where)
    checked = checked_shape(shape, where, max_rows)
    if raw is None:
        data = array_from_values(values if values is not None else [], datatype, checked, where)
    else:
        data = array_from_bytes(raw, datatype, checked, where, kind="raw")
    return InputTensor(name, datatype, checked, data)


def typed_contents(tensor: Any) -> list[Any] | np.ndarray:
    """An input's values from its typed ``contents``: the one field of its datatype (the table's);
    values in any other field are refused, never ignored."""
    where = f"input {tensor.name!r}"
    field = CONTENTS_FIELDS.get(tensor.datatype)
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if field is None and tensor.datatype in NUMPY_DTYPES:
        raise UnprocessableInput(f"{where}: {tensor.datatype} data must come in raw_input_contents")
    other = [name for name in given if name != field]
    if field is not None and other:
        raise UnprocessableInput(
            f"{where}: {tensor.datatype} values go in contents.{field}, not {', '.join(other)}"
        )
    if field is None:
        return []
    values = getattr(tensor.contents, field)
    return list(values) if field == "bytes_contents" else _numbers(values, FIELD_DTYPES[field])


def _numbers(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """A repeated number field as numpy, ``TYPED_SLICE`` values a call: each call holds the
    interpreter, and one call over 3.1 million values (a list, then its bounds, then numpy)
    held every other request's turn 160-240 ms, although it ran on a pool thread."""
    array = np.empty(len(values), dtype)
    for start in range(0, len(array), TYPED_SLICE):
        array[start : start + TYPED_SLICE] = values[start : start + TYPED_SLICE]
    return array


def check_value_counts(
    request: Any, bounds: Mapping[str, int], max_rows: int, elements: Mapping[str, int]
) -> None:
    """Each input's shape and typed values held to what the model's input of that name takes
    (``bounds``: ``limits.value_bounds``; ``elements``, its BYTES elements), in O(1) a tensor,
    before any value is converted, measured or read from shared memory: 10 million empty BYTES
    values for an image model held the event loop 1.2 s and grew the server by 685 MB before
    the model refused them."""
    for tensor in request.inputs[:MAX_TENSORS]:
        most = value_bound(elements if tensor.datatype == "BYTES" else bounds, tensor.name)
        if most is None:
            continue
        where = f"input {tensor.name!r}"
        if len(tensor.shape) <= MAX_RANK:  # else refused as it is decoded
            checked_shape(list(tensor.shape), where, max_rows, most)
        field = CONTENTS_FIELDS.get(tensor.datatype)
        count = len(getattr(tensor.contents, field)) if field else 0
        if count > most:
            raise PayloadTooLarge(
                f"{where}: {count} values, more than the model's input takes in one request "
                f"({most})"
            )


def python_decode_bytes(request: Any) -> int:
    """About how many bytes of the request decoding reads value by value in Python (typed
    ``contents``, 4 bytes a value; BYTES elements, typed or raw), unlike numbers in
    ``raw_input_contents``, which numpy reads in place: what decides whether decoding may run on
    the event loop."""
    total = 0
    variable = False  # a BYTES input: its raw contents are split element by element
    for tensor in request.inputs[:MAX_TENSORS]:
        field = CONTENTS_FIELDS.get(tensor.datatype)
        values = getattr(tensor.contents, field) if field else ()
        total += 4 * len(values)
        datatype = DATATYPES.get(tensor.datatype)
        if datatype is not None and datatype.size is None:
            variable = True
            total += sum(map(len, values))
    if variable:
        total += sum(map(len, request.raw_input_contents[: MAX_TENSORS + 1]))
    return total


def encode_infer_response(response: InferResponse) -> Any:
    """Every output as raw bytes in ``raw_output_contents`` (what tritonclient reads)."""
    message = _response_head(response)
    for raw in _raw_outputs(response):
        message.raw_output_contents.append(bytes(raw))
    return message


def answer_bytes(response: InferResponse) -> int | None:
    """The raw contents' bytes an answer carries (none for outputs written to shared memory);
    None when it holds BYTES outputs, whose size is known once they are written."""
    size = 0
    for name, array in response.outputs.items():
        if array.dtype.hasobject:
            return None
        if name not in response.shared_memory:
            size += array.nbytes
    return size


def encode_infer_response_bytes(response: InferResponse) -> bytes:
    """``encode_infer_response`` serialized, each output copied once: its head (every field
    but the raw contents) serialized by protobuf, then each raw content as its field on the
    wire (fields may come in any order; a repeated one's keep theirs). For a large answer, on
    the work pool: built and serialized on the loop, a 64 MB answer held health checks 219 ms
    (three copies, each one call that holds the interpreter)."""
    parts = [_response_head(response).SerializeToString()]
    for raw in _raw_outputs(response):
        parts += (RAW_OUTPUT_TAG, _varint(len(raw)), raw)
    return b"".join(parts)


def stream_response_bytes(infer_response: bytes) -> bytes:
    """A ``ModelStreamInferResponse`` holding an already serialized ``infer_response``."""
    return b"".join((STREAM_ANSWER_TAG, _varint(len(infer_response)), infer_response))


def _response_head(response: InferResponse) -> Any:
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs.items():
        tensor = message.outputs.add(
            name=name, datatype=DATATYPE_NAMES[array.dtype], shape=list(array.shape)
        )
        region = response.shared_memory.get(name)
        if region is not None:  # written there: its parameters and empty contents, as Triton
            set_region(tensor.parameters, region)
    return message


def _raw_outputs(response: InferResponse) -> list[bytes | memoryview]:
    """Each output's raw contents, in order (empty for one written to shared memory); numbers
    as a view of their array, not a copy."""
    raws: list[bytes | memoryview] = []
    for name, array in response.outputs.items():
        if name in response.shared_memory or array.size == 0:
            raws.append(b"")
        elif array.dtype.hasobject:
            raws.append(tensor_to_bytes(array))
        else:
            raws.append(memoryview(np.ascontiguousarray(array).data).cast("B"))
    return raws


def _varint(value: int) -> bytes:
    """``value`` as protobuf's base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def server_metadata_response(meta: ServerMetadata) -> Any:
    return service_pb2.ServerMetadataResponse(**vars(meta))


def _tensor_metadata(spec: TensorSpec) -> Any:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def model_metadata_response(meta: ModelMetadata) -> Any:
    return service_pb2.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[_tensor_metadata(t) for t in meta.inputs],
        outputs=[_tensor_metadata(t) for t in meta.outputs],
    )


def repository_index_response(entries: Sequence[RepositoryEntry]) -> Any:
    index = service_pb2.RepositoryIndexResponse
    return index(models=[index.ModelIndex(**vars(entry)) for entry in entries])
