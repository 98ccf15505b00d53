"""Property-based fuzzing of every decoder on a real server (issue 24): arbitrary JSON, v2 infer
bodies built from the protocol's own fields with hostile values, the binary extension, multipart
forms and protobuf messages never produce a 5xx or an unhandled error, and each is answered within
a bound proportional to its size. Derandomized, so a failure reproduces."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2

from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, running_server

FUZZ = settings(
    max_examples=150,
    deadline=None,  # timed below, against the body's size
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
INFER = "/v2/models/tiny/infer"
DATATYPES = ["UINT8", "FP32", "FP16", "INT32", "INT64", "BOOL", "BYTES", "FP64", "uint8", ""]


def bound_s(size: int) -> float:
    """The most one answer may take: a fixed allowance plus 1 s per MB (a real body of 1 MB is
    decoded in a few ms here)."""
    return 1.0 + size / 1e6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    settings = Settings(
        model_repository=make_model_repo(tmp_path_factory.mktemp("fuzz"), lecture=False),
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        max_images_per_request=16,
        inline_decode_bytes=256,  # the work pool's path too, with small bodies
    )
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(http: httpx.Client, path: str, content: bytes, headers: dict[str, str]) -> None:
    start = time.perf_counter()
    response = http.post(path, content=content, headers=headers)
    elapsed = time.perf_counter() - start
    assert response.status_code < 500, (response.status_code, response.text[:300], content[:300])
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str), response.text
    assert elapsed < bound_s(len(content)), f"{elapsed:.2f} s for {len(content)} bytes"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
# the dimensions that break naive code: zero beside huge ones, past int64, ranks numpy refuses
edge_dims = st.sampled_from([0, 1, 3, 32, 2**31, 2**62, 2**63 - 1, 2**63, 2**64 - 1])
dims = (
    st.integers(min_value=-2, max_value=4)
    | st.integers(min_value=-(2**63), max_value=2**64)
    | edge_dims
)
shapes = (
    st.lists(edge_dims, min_size=1, max_size=6)
    | st.lists(dims, max_size=20)
    | st.lists(st.just(1), min_size=60, max_size=70)
    | st.just([1, 32, 32, 3])
    | json_values
)
data: st.SearchStrategy[Any] = (
    st.just([])
    | st.lists(st.integers(-300, 300) | st.floats() | st.booleans(), max_size=40)
    | st.lists(st.lists(st.integers(0, 255), max_size=4), max_size=4)
    | json_values
)
parameters = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "x"]),
    json_values | st.integers(0, 5000),
    max_size=3,
)
# Mostly the model's own name and real datatypes, so the hostile values reach the deeper checks.
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["images"] * 6 + ["x", ""]) | json_values,
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES[:6] * 3 + DATATYPES) | json_values,
    },
    optional={"data": data, "parameters": parameters, "extra": json_values},
)
outputs = st.fixed_dictionaries(
    {"name": st.sampled_from(["probabilities", "logits", "nope"]) | json_values},
    optional={"parameters": parameters},
)
infer_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "outputs": st.lists(outputs, max_size=3) | json_values,
        "id": json_values,
        "parameters": parameters | json_values,
        "model_name": st.sampled_from(["tiny", "other"]) | json_values,
        "model_version": st.sampled_from(["1", "2", "9", "\u0661", "01"]) | json_values,
        "input": json_values,
    },
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@FUZZ
@given(body=json_values)
def test_arbitrary_json_never_fails_the_server(http: httpx.Client, body: Any) -> None:
    for path in (INFER, "/v1/models/tiny:predict", "/v2/repository/index", "/v1/shapes"):
        post(http, path, dumps(body), {"Content-Type": "application/json"})


@FUZZ
@given(body=infer_bodies)
def test_protocol_shaped_infer_bodies_never_fail_the_server(
    http: httpx.Client, body: dict[str, Any]
) -> None:
    post(http, INFER, dumps(body), {"Content-Type": "application/json"})
    post(http, "/v2/models/tiny/versions/1/infer", dumps(body), {})


@FUZZ
@given(
    shape=shapes,
    datatype=st.sampled_from(DATATYPES[:6]),
    binary=st.booleans(),
    filler=st.sampled_from([0, 1, 3072]),
)
def test_any_shape_of_an_otherwise_valid_tensor_never_fails_the_server(
    http: httpx.Client, shape: Any, datatype: str, binary: bool, filler: int
) -> None:
    """The shape checker on its own, over JSON and the binary extension: an empty (or
    filler-long) tensor of the model's input name and a real datatype, any shape."""
    tensor: dict[str, Any] = {"name": "images", "shape": shape, "datatype": datatype}
    if not binary:
        tensor["data"] = [0] * filler
        post(http, INFER, dumps({"inputs": [tensor]}), {})
        return
    tensor["parameters"] = {"binary_data_size": filler}
    header = dumps({"inputs": [tensor]})
    headers = {"Inference-Header-Content-Length": str(len(header))}
    post(http, INFER, header + bytes(filler), headers)


@FUZZ
@given(
    body=infer_bodies,
    tail=st.binary(max_size=200),
    length=st.none()
    | st.integers(min_value=-5, max_value=5000)
    | st.from_regex(r"[0-9a-z+\-]{0,5}", fullmatch=True),
)
def test_binary_extension_bodies_never_fail_the_server(
    http: httpx.Client, body: dict[str, Any], tail: bytes, length: int | str | None
) -> None:
    header = dumps(body)
    declared = str(len(header) if length is None else length)
    headers = {"Inference-Header-Content-Length": declared}
    post(http, INFER, header + tail, headers)


predict_instances = st.lists(
    st.fixed_dictionaries({"b64": st.text(max_size=40) | json_values})
    | st.lists(st.lists(st.lists(st.integers(-1, 256), max_size=3), max_size=3), max_size=3)
    | json_values,
    max_size=4,
)
predict_bodies = st.fixed_dictionaries(
    {},
    optional={
        "instances": predict_instances | json_values,
        "inputs": predict_instances
        | st.dictionaries(st.text(max_size=8), json_values)
        | json_values,
        "signature_name": st.sampled_from(["serving_default", "x"]) | json_values,
        "top_k": st.integers(-2, 2000) | json_values,
    },
)


@FUZZ
@given(body=predict_bodies)
def test_predict_bodies_never_fail_the_server(http: httpx.Client, body: dict[str, Any]) -> None:
    post(http, "/v1/models/tiny:predict", dumps(body), {"Content-Type": "application/json"})


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


PNG = _png(8, 8)
file_contents = (
    st.binary(max_size=300)
    | st.just(PNG)
    | st.integers(1, len(PNG) - 1).map(lambda n: PNG[:n])  # truncated
    | st.binary(min_size=1, max_size=8).map(lambda junk: PNG[:40] + junk + PNG[40:])
)
parts = st.lists(
    st.tuples(
        st.sampled_from(["file", "layer", "x", ""]),
        st.none() | st.text(max_size=10),
        file_contents,
    ),
    max_size=4,
)


def multipart(boundary: str, items: list[tuple[str, str | None, bytes]]) -> bytes:
    chunks = []
    for name, filename, content in items:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n"
        chunks.append(head.encode("utf-8", "replace") + content + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


@FUZZ
@given(
    items=parts,
    boundary=st.text(alphabet="abcXYZ019-_", min_size=1, max_size=20),
    declared=st.none() | st.from_regex(r"[!-~]{0,30}", fullmatch=True),
    garbage=st.none() | st.binary(max_size=300),
)
def test_multipart_forms_never_fail_the_server(
    http: httpx.Client,
    items: list[tuple[str, str | None, bytes]],
    boundary: str,
    declared: str | None,
    garbage: bytes | None,
) -> None:
    body = multipart(boundary, items) if garbage is None else garbage
    content_type = f"multipart/form-data; boundary={declared if declared is not None else boundary}"
    for path in ("/v1/models/tiny:classify", "/v1/models/tiny/activations"):
        post(http, path, body, {"Content-Type": content_type})


METHODS = ["ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "RepositoryIndex"]


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_url) as opened:
        yield opened


def call(channel: grpc.Channel, method: str, message: bytes) -> None:
    """Send ``message`` as-is; any answer but a server-side failure passes."""
    start = time.perf_counter()
    try:
        channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(message, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            exc.code(),
            exc.details(),
        )
    assert time.perf_counter() - start < bound_s(len(message))


@FUZZ
@given(method=st.sampled_from(METHODS), message=st.binary(max_size=400))
def test_arbitrary_protobuf_bytes_never_fail_the_server(
    channel: grpc.Channel, method: str, message: bytes
) -> None:
    call(channel, method, message)


grpc_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["images", "x", ""]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(
            st.integers(min_value=-(2**63), max_value=2**63 - 1)
            | st.sampled_from([0, 1, 2**31, 2**62, 2**63 - 1]),
            max_size=20,
        )
        | st.lists(st.just(1), min_size=60, max_size=70)
        | st.lists(st.integers(-1, 4), max_size=5)
        | st.just([1, 32, 32, 3]),
        "uints": st.lists(st.integers(0, 2**32 - 1), max_size=20),
        "floats": st.lists(st.floats(width=32), max_size=20),
    }
)


@FUZZ
@given(
    inputs=st.lists(grpc_tensors, max_size=3),
    raw=st.lists(st.binary(max_size=100) | st.just(bytes(3072)), max_size=3),
    outputs=st.lists(st.sampled_from(["probabilities", "logits", "x", ""]), max_size=3),
    version=st.sampled_from(["", "1", "2", "0", "-1", "\u0661", "x"]),
)
def test_protocol_shaped_grpc_requests_never_fail_the_server(
    channel: grpc.Channel,
    inputs: list[dict[str, Any]],
    raw: list[bytes],
    outputs: list[str],
    version: str,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny", model_version=version)
    for tensor in inputs:
        added = request.inputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
        added.contents.uint_contents.extend(tensor["uints"])
        added.contents.fp32_contents.extend(tensor["floats"])
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    call(channel, "ModelInfer", request.SerializeToString())
