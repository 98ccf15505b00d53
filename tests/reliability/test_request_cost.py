"""Cheap requests must not buy expensive work (issue 24): each hostile request an attacker's
review found, and its neighbours, sent to a real server in its own process. Each is answered with
its 4xx within a bound proportional to its size, and a health check running throughout is
answered within 100 ms every time (the event loop never stalls)."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import service_pb2

from tests.support.health import HealthWatch
from tests.support.models import make_model_repo
from tests.support.servers import ServerProcess, server_process, service_command

HEALTH_BOUND_S = 0.1  # the bound on a concurrent health check
INFER = "/v2/models/tiny/infer"


def refusal_bound_s(size: int) -> float:
    """How long refusing a body of ``size`` bytes may take: a fixed allowance for a loaded
    2-core machine plus reading it at 20 MB/s (loopback reads at GB/s)."""
    return 1.0 + size / 20e6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = make_model_repo(tmp_path_factory.mktemp("cost"), lecture=False)
    env = {
        **os.environ,
        "MODEL_REPOSITORY": str(repo),
        "PROVIDERS": "CPUExecutionProvider",
        "POLL_INTERVAL_S": "0",
        "LOOP_LAG_INTERVAL_S": "0.02",
    }
    with server_process(service_command(), env=env) as running:
        running.wait_ready()
        yield running


def send(
    server: ServerProcess,
    path: str,
    content: bytes,
    headers: dict[str, str] | None = None,
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
) -> tuple[httpx.Response, float, HealthWatch]:
    """POST while a ``HealthWatch`` runs; the answer, its time and the watch."""
    with HealthWatch(server.rest_port) as watch, httpx.Client(timeout=60) as http:
        start = time.perf_counter()
        if files is not None:
            response = http.post(f"{server.url}{path}", files=files)
        else:
            response = http.post(f"{server.url}{path}", content=content, headers=headers or {})
        elapsed = time.perf_counter() - start
    # shown with -s: the figures docs/reliability.md quotes
    print(
        f"\n{path}: {len(content) or 'multipart'} bytes -> {response.status_code} in "
        f"{elapsed * 1000:.0f} ms; health checks {watch.count}, worst {watch.worst * 1000:.1f} ms"
    )
    return response, elapsed, watch


def assert_refused_quickly(
    server: ServerProcess,
    path: str,
    body: bytes,
    statuses: set[int],
    headers: dict[str, str] | None = None,
    health_bound_s: float = HEALTH_BOUND_S,
) -> str:
    response, elapsed, watch = send(server, path, body, headers)
    assert response.status_code in statuses, response.text[:300]
    assert elapsed < refusal_bound_s(len(body)), f"{elapsed:.2f} s for {len(body)} bytes"
    assert watch.count >= 5 and not watch.failures, watch.failures
    assert watch.worst < health_bound_s, f"a health check waited {watch.worst * 1000:.0f} ms"
    message: str = response.json()["error"]
    return message


def infer_body(**fields: object) -> bytes:
    tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
    return json.dumps({"inputs": [tensor], **fields}).encode()


def test_unknown_top_level_keys_are_refused_on_their_count(server: ServerProcess) -> None:
    body = infer_body(**{f"k{i}": 0 for i in range(64_000)})
    assert len(body) > 700_000
    message = assert_refused_quickly(server, INFER, body, {400})
    assert "64" in message and "fields" in message


def test_a_handful_of_unknown_keys_is_still_served(server: ServerProcess) -> None:
    response, _, watch = send(server, INFER, infer_body(**{f"k{i}": 0 for i in range(60)}))
    assert response.status_code == 200, response.text
    assert watch.worst < HEALTH_BOUND_S


def test_predict_with_300000_unknown_keys_is_refused(server: ServerProcess) -> None:
    instances = {"instances": [[[[0, 0, 0]] * 32] * 32]}
    body = json.dumps({**instances, **{f"x{i}": 1 for i in range(300_000)}}).encode()
    assert_refused_quickly(server, "/v1/models/tiny:predict", body, {400})


def test_100000_input_tensors_are_refused_on_their_count(server: ServerProcess) -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "UINT8", "data": [0]}
    body = json.dumps({"inputs": [tensor] * 100_000}).encode()
    message = assert_refused_quickly(server, INFER, body, {400})
    assert "100000 inputs" in message


def test_a_tensor_with_32000_extra_keys_is_refused(server: ServerProcess) -> None:
    tensor: dict[str, object] = {
        "name": "images",
        "shape": [1, 32, 32, 3],
        "datatype": "UINT8",
        "data": [0] * 3072,
    }
    tensor.update({f"extra{i}": 0 for i in range(32_000)})
    body = json.dumps({"inputs": [tensor]}).encode()
    assert_refused_quickly(server, INFER, body, {400})


def test_many_requested_outputs_are_refused(server: ServerProcess) -> None:
    body = infer_body(outputs=[{"name": f"o{i}"} for i in range(50_000)])
    assert_refused_quickly(server, INFER, body, {400})


def test_a_huge_parameters_object_is_refused(server: ServerProcess) -> None:
    body = infer_body(parameters={f"p{i}": i for i in range(100_000)})
    assert_refused_quickly(server, INFER, body, {400})


def test_deeply_nested_data_is_refused(server: ServerProcess) -> None:
    nested = "[" * 5000 + "0" + "]" * 5000
    body = (
        '{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", '
        f'"data": {nested}}}]}}'
    ).encode()
    assert_refused_quickly(server, INFER, body, {400, 422})


# Reading 60 MB and handing it to the child still costs the loop some tens of ms (and the first
# such body starts the child); the parse itself, on a pool thread, held it 250-630 ms.
SIXTY_MB_HEALTH_BOUND_S = 0.2


@pytest.mark.parametrize(
    ("token", "count"),
    [(b"[", 60_000_000), (b"0,", 30_000_000), (b'"a",', 14_000_000)],
    ids=["nesting", "zeros", "strings"],
)
def test_60_mb_of_json_for_one_image_is_refused_without_holding_the_loop(
    server: ServerProcess, token: bytes, count: int
) -> None:
    """Tens of millions of values (or brackets) where the shape wants 3,072: the parse alone
    holds the interpreter for 0.2-0.6 s, so the body goes to the pool's child process
    (``PROCESS_DECODE_BYTES``), where values beyond what 1,024 rows of the model hold are
    refused (413) on their commas before any parsing; brackets are parsed, and refused at depth
    1,024 (400)."""
    head = b'{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": '
    data = b"[" + token * count + b"0]" if token != b"[" else token * count
    body = head + data + b"}]}"
    assert len(body) > 55_000_000
    status = 400 if token == b"[" else 413
    assert_refused_quickly(server, INFER, body, {status}, health_bound_s=SIXTY_MB_HEALTH_BOUND_S)


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v1/models/tiny/activations"])
def test_millions_of_numbers_for_one_v1_image_are_refused_without_holding_the_loop(
    server: ServerProcess, path: str
) -> None:
    """One instance of 10 million zeros (20 MB): decoding it cost 4 s, its parse and its numbers
    holding the loop 250-320 ms on a pool thread. Its values are counted before it is parsed
    (by its commas), and the body is looked at in the child process."""
    body = b'{"instances": [[' + b"0," * 10_000_000 + b"0]]}"
    assert len(body) > 4 * 1024 * 1024  # PROCESS_DECODE_BYTES
    json_type = {"content-type": "application/json"}
    bound = SIXTY_MB_HEALTH_BOUND_S
    message = assert_refused_quickly(server, path, body, {413}, json_type, health_bound_s=bound)
    assert "10000000 values" in message


def pixel_rows(images: int) -> str:
    rows = np.random.default_rng(5).integers(0, 256, (images, 32, 32, 3)).tolist()
    return json.dumps(rows, separators=(",", ":"))


@pytest.mark.parametrize(
    ("path", "tail", "status"),
    [
        ("/v1/models/tiny:predict", ', "zz": 123456789012345678901234567890}', 200),
        ("/v1/models/tiny:predict", ', "zz": [1, 2,]}', 400),
        (INFER, ', "zz": 123456789012345678901234567890}', 200),
    ],
    ids=["predict-big-integer", "predict-malformed", "infer-big-integer"],
)
def test_a_body_simdjson_declines_is_read_again_off_the_servers_interpreter(
    server: ServerProcess, path: str, tail: str, status: int
) -> None:
    """One integer over 64 bits (valid JSON, read as a float) or one stray comma sends a body
    to orjson, which makes a Python object of every value: on a pool thread a 3.9 MB body held
    health checks 217-478 ms. Under 4 MiB it is not the child's by size, so it is sent there
    when simdjson declines it."""
    if path == INFER:
        head = '{"inputs": [{"name": "images", "shape": [300, 32, 32, 3], "datatype": "UINT8", '
        body = (head + f'"data": {pixel_rows(300)}}}]' + tail).encode()
    else:
        body = ('{"instances": ' + pixel_rows(300) + tail).encode()
    assert 2_000_000 < len(body) < 4 * 1024 * 1024  # PROCESS_DECODE_BYTES: a pool thread's
    response, _, watch = send(server, path, body, {"content-type": "application/json"})
    assert response.status_code == status, response.text[:300]
    assert watch.count >= 5 and not watch.failures, watch.failures
    assert watch.worst < HEALTH_BOUND_S, f"a health check waited {watch.worst * 1000:.0f} ms"


HUGE_SHAPES = [[0, 2**62, 2**62, 3], [1, 0, 2**63 - 1], [1] * 65, [0] * 17, [2**31, 0]]


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=lambda s: f"rank{len(s)}-{max(s)}")
def test_shapes_numpy_cannot_hold_are_4xx_over_json(
    server: ServerProcess, shape: list[int]
) -> None:
    body = json.dumps(
        {"inputs": [{"name": "images", "shape": shape, "datatype": "UINT8", "data": []}]}
    ).encode()
    assert_refused_quickly(server, INFER, body, {400, 413, 422})


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=lambda s: f"rank{len(s)}-{max(s)}")
def test_shapes_numpy_cannot_hold_are_4xx_over_the_binary_extension(
    server: ServerProcess, shape: list[int]
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": shape,
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    assert_refused_quickly(server, INFER, header, {400, 413, 422}, headers)


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=lambda s: f"rank{len(s)}-{max(s)}")
def test_shapes_numpy_cannot_hold_are_invalid_argument_over_grpc(
    server: ServerProcess, shape: list[int]
) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="UINT8", shape=shape)
    request.raw_input_contents.append(b"")
    with HealthWatch(server.rest_port) as watch, grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    assert caught.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ), caught.value.details()
    assert "input 'images'" in (caught.value.details() or "")
    assert watch.worst < HEALTH_BOUND_S


@pytest.mark.parametrize(
    "method", ["ModelInfer", "ModelMetadata", "RepositoryModelLoad", "ServerLive"]
)
def test_garbage_grpc_messages_are_invalid_argument_in_our_words(
    server: ServerProcess, method: str
) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # bytes as-is
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff\x0f garbage \x00\x01", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == f"the request is not a valid {method}Request message"


def png_of(width: int, height: int) -> bytes:
    """A PNG that is a few kilobytes on the wire and width x height pixels decoded."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG", optimize=True)
    return out.getvalue()


def test_40_huge_pngs_in_one_classify_are_refused_before_decoding(server: ServerProcess) -> None:
    png = png_of(4000, 4000)
    assert len(png) < 5_000
    files = [("file", (f"{i}.png", png, "image/png")) for i in range(40)]
    response, elapsed, watch = send(server, "/v1/models/tiny:classify", b"", files=files)
    assert response.status_code == 413, response.text
    assert "pixels" in response.json()["error"]
    assert elapsed < refusal_bound_s(40 * len(png))
    assert watch.worst < HEALTH_BOUND_S, f"a health check waited {watch.worst * 1000:.0f} ms"


@pytest.mark.parametrize("after", [b" " * 64, b"X\r\n--a" * 8], ids=["padding", "near-delimiters"])
def test_a_form_padded_after_its_delimiters_is_refused_in_its_first_chunk(
    server: ServerProcess, after: bytes
) -> None:
    """python-multipart walks padding after a delimiter, and a delimiter followed by anything
    else, a byte at a time (185 and 130 ms of the loop a MiB): 24 MiB of either cost the loop
    4 s in 0.1 s slices. RFC 2046 forbids both; the form is refused before the parser sees it."""
    head = b'--a\r\nContent-Disposition: form-data; name="f"; filename="x.png"\r\n\r\nx\r\n--a'
    body = head + after * ((24 << 20) // len(after))
    headers = {"Content-Type": "multipart/form-data; boundary=a"}
    message = assert_refused_quickly(server, "/v1/models/tiny:classify", body, {400}, headers)
    assert "delimiter" in message


def test_40_huge_pngs_through_predict_base64_are_refused(server: ServerProcess) -> None:
    b64 = base64.b64encode(png_of(4000, 4000)).decode()
    body = json.dumps({"instances": [{"b64": b64}] * 40}).encode()
    message = assert_refused_quickly(server, "/v1/models/tiny:predict", body, {413})
    assert "pixels" in message


def test_huge_pngs_within_the_budget_are_decoded_off_the_loop(server: ServerProcess) -> None:
    """The neighbour that is served: 4 images of 16 M pixels (the request budget exactly) take
    about a second of decoding, on the work pool, while health checks go on being answered."""
    png = png_of(4000, 4000)
    files = [("file", (f"{i}.png", png, "image/png")) for i in range(4)]
    response, elapsed, watch = send(server, "/v1/models/tiny:classify", b"", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 4
    assert watch.count >= 5 and not watch.failures
    assert watch.worst < HEALTH_BOUND_S, (
        f"a health check waited {watch.worst * 1000:.0f} ms during {elapsed:.2f} s of decoding"
    )


def test_the_loop_lag_metric_saw_no_stall(server: ServerProcess) -> None:
    """Runs after the hostile requests above and before the largest allowed bodies below (file
    order): the server's own measure of its event loop agrees with the health checks."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("event_loop_lag_seconds_bucket")
    }
    assert buckets["+Inf"] > 50, "the lag was hardly measured"
    # The 60 MB bodies may cost the loop up to SIXTY_MB_HEALTH_BOUND_S (their first read and
    # hand-over: one wake-up in the 0.1-0.25 s bucket in 3 of 5 runs of this file); the
    # histogram's bucket above that bound is the one that must stay empty.
    assert SIXTY_MB_HEALTH_BOUND_S <= 0.25
    late = buckets["+Inf"] - buckets["0.25"]
    assert late == 0, f"{late:.0f} of {buckets['+Inf']:.0f} timer wake-ups came over 250 ms late"


# The largest bodies the limits allow are not hostile, but they are where decoding costs most:
# about 14 MB of JSON for 1,024 images. On a pool thread simdjson held the interpreter for the
# whole parse while its fresh buffers (about 6x the body) were page-faulted in, which held the
# loop for 60-320 ms on this 2-core machine (docs/reliability.md); both are decoded in the work
# pool's child process now. :predict's result, 1,024 arrays, comes back pickled, so it keeps the
# 60 MB bodies' bound; the binary extension carries the same batch with no parsing at all.


def test_the_largest_allowed_json_batch_is_decoded_in_the_child(server: ServerProcess) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 32, 32, 3))
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "data": pixels.ravel().tolist(),
                }
            ]
        }
    ).encode()
    response, _, watch = send(server, INFER, body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"][0] == 1024
    waited = f"a health check waited {watch.worst * 1000:.0f} ms"
    assert watch.worst < HEALTH_BOUND_S, waited


def test_the_largest_allowed_predict_batch_is_decoded_in_the_child(server: ServerProcess) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (1024, 32, 32, 3))
    body = json.dumps({"instances": pixels.tolist()}).encode()
    response, _, watch = send(server, "/v1/models/tiny:predict", body)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1024
    waited = f"a health check waited {watch.worst * 1000:.0f} ms"
    assert watch.worst < SIXTY_MB_HEALTH_BOUND_S, waited
