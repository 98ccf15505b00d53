"""What a client sends and an answer or a log line quotes back (the thirteenth audit): a 30 MB
tensor name echoed whole in a gRPC status held the loop 0.6 s and grew grpc-core 33 MB a call;
a status message over 2,048 bytes is dropped by grpc-core, which writes a line to stderr for each;
and a refused admin call was a new kind of log line for every path, so distinct names in the path
grew the log by a byte for every byte sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api import admin
from service.api.grpc.servicer import MAX_STATUS_BYTES, status_message
from service.core.errors import MAX_MESSAGE_CHARS, InvalidCard, InvalidInput
from service.core.limits import MAX_TENSOR_NAME_CHARS
from service.core.throttled_log import ThrottledLog
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import load_version
from tests.support.apps import make_settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, running_server

LONG = 1_000_000  # characters of a name, a datatype


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("echoed"), lecture=False)
    with running_server(make_settings(repo)) as running:
        yield running


def grpc_request(**change: str) -> object:
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name=change.get("name", "images"), shape=[1, 32, 32, 3])
    tensor.datatype = change.get("datatype", "UINT8")
    request.raw_input_contents.append(np.zeros((1, 32, 32, 3), np.uint8).tobytes())
    if "output" in change:
        request.outputs.add(name=change["output"])
    return request


@pytest.mark.parametrize("change", ["name", "output", "datatype"])
def test_a_long_tensor_name_or_datatype_is_refused_in_a_short_grpc_status(
    served: Running, change: str
) -> None:
    options = [("grpc.max_send_message_length", 8 * LONG)]
    with grpc.insecure_channel(served.grpc_url, options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(grpc_request(**{change: "n" * LONG}), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert 0 < len(details) < 300, details[:300]  # the reason, not the name


@pytest.mark.parametrize("where", ["inputs", "outputs"])
def test_a_long_tensor_name_is_refused_in_a_short_rest_answer(served: Running, where: str) -> None:
    tensor: dict[str, object] = {
        "name": "images",
        "shape": [3],
        "datatype": "UINT8",
        "data": [1, 2, 3],
    }
    body: dict[str, list[dict[str, object]]] = {"inputs": [tensor], "outputs": [{"name": "x"}]}
    body[where][0]["name"] = "n" * LONG
    answer = httpx.post(f"{served.url}/v2/models/tiny/infer", json=body, timeout=30)
    assert answer.status_code == 400
    assert "characters, more than the limit" in answer.json()["error"]
    assert len(answer.content) < 300


def test_an_error_message_is_cut_and_a_grpc_status_fits_its_trailer() -> None:
    assert len(InvalidInput("x" * 10 * MAX_MESSAGE_CHARS).message) < MAX_MESSAGE_CHARS + 64
    assert InvalidInput("short").message == "short"
    assert status_message("a reason") == "a reason"
    lone = status_message("bad \ud800 name " * 1000)  # grpc encodes strictly: the call hung
    assert lone.encode("utf-8") and lone.endswith("(cut)")
    for char in ("a", "%", "é", "\N{SNOWMAN}", "\n", "\ud800"):
        message = status_message(char * MAX_MESSAGE_CHARS)
        encoded = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode())
        assert message.startswith(char.encode("utf-8", "backslashreplace").decode() * 8)
        assert MAX_STATUS_BYTES - 64 < encoded <= MAX_STATUS_BYTES, char
        assert message.endswith("(cut)")


def test_refused_admin_calls_naming_ever_new_paths_are_one_kind_of_log_line(
    served: Running, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "_refusal_log", ThrottledLog(admin.log))  # none told yet
    with caplog.at_level(logging.INFO, logger=admin.log.name), httpx.Client() as client:
        for i in range(20):
            name = f"{i}-" + "m" * 2000
            refused = client.post(f"{served.url}/v2/repository/models/{name}/load")
            assert refused.status_code in (401, 403)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, [line[:120] for line in lines]
    assert "/v2/repository/models/0-mmm" in lines[0] and len(lines[0]) < 600


@pytest.mark.parametrize("length", [300, MAX_TENSOR_NAME_CHARS + 1])
def test_a_model_whose_tensor_names_no_request_may_give_is_refused_at_load(
    tmp_path: Path, length: int
) -> None:
    """Names as long as exported graphs have (scope paths) load and serve; a longer one than a
    request may give would load READY and refuse every v2 request (a review)."""
    name = "x" * length
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        "long",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    folder = tmp_path / "long" / "1"
    folder.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "model.onnx"))
    options = RuntimeOptions(providers=("CPUExecutionProvider",))
    if length <= MAX_TENSOR_NAME_CHARS:
        card, runtime, _ = load_version("long", 1, folder, options)
        assert card.inputs[0].name == name
        runtime.close()
    else:
        with pytest.raises(InvalidCard, match="more than the 4096 a request may give"):
            load_version("long", 1, folder, options)
