"""A small request whose answer is large (a tensor model any ONNX graph may be) must not hold the
event loop while its answer is written: 30 MB of float32 outputs as JSON took orjson 239 ms in
one call, on the loop. Large answers are written on the work pool, a slice at a time."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.core.card import TensorSpec
from tests.support.health import HealthWatch
from tests.support.models import OPSET
from tests.support.servers import ServerProcess, server_process, service_command
from tests.support.tensor_models import write_tensor_model

WIDTH = 1_000_000  # output values a row: 250,000 copies of the row's 4
ROWS = 8  # 8 million float32 values, about 85 MB of JSON


def widening_graph() -> onnx.ModelProto:
    """``INPUT`` FP32 [N, 4] -> ``OUTPUT`` [N, WIDTH]: the row tiled."""
    x = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["N", WIDTH])
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [1, WIDTH // 4])
    node = helper.make_node("Tile", ["INPUT", "repeats"], ["OUTPUT"])
    graph = helper.make_graph([node], "widen", [x], [y], [repeats])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("large")
    write_tensor_model(
        repo,
        "widen",
        widening_graph(),
        [TensorSpec("INPUT", "FP32", [-1, 4])],
        [TensorSpec("OUTPUT", "FP32", [-1, WIDTH])],
    )
    env = {
        **os.environ,
        "MODEL_REPOSITORY": str(repo),
        "PROVIDERS": "CPUExecutionProvider",
        "POLL_INTERVAL_S": "0",
    }
    with server_process(service_command(), env=env) as running:
        running.wait_ready()
        yield running


def fetch(port: int, body: bytes) -> bytes:
    """POST ``body`` and read the whole answer in pieces (the socket lets go of this process's
    interpreter while it waits, so the health checks beside it are not held up here)."""
    head = (
        "POST /v2/models/widen/infer HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    pieces = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body)
        while piece := sock.recv(1 << 20):
            pieces.append(piece)
    return b"".join(pieces)


def test_a_large_json_answer_is_written_without_holding_the_loop(server: ServerProcess) -> None:
    rows = np.random.default_rng(4).random((ROWS, 4), dtype=np.float32)  # about 10 digits each
    tensor = {"name": "INPUT", "shape": [ROWS, 4], "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}).encode()
    with HealthWatch(server.rest_port) as watch:
        answer = fetch(server.rest_port, body)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    (output,) = json.loads(payload)["outputs"]
    assert output["shape"] == [ROWS, WIDTH] and len(output["data"]) == ROWS * WIDTH
    expected = np.tile(rows, (1, WIDTH // 4)).ravel()
    np.testing.assert_array_equal(np.asarray(output["data"], dtype=np.float32), expected)
    assert watch.count >= 5 and not watch.failures, watch.failures
    print(f"\n{len(payload)} bytes; health checks {watch.count}, worst {watch.worst * 1e3:.1f} ms")
    assert watch.worst < 0.1, f"a health check waited {watch.worst * 1000:.0f} ms"
