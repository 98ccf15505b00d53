"""Triton's logging and trace extensions with the real ``tritonclient`` (HTTP and gRPC): round
trips, the admin rule on changes, hostile settings answered 400 / INVALID_ARGUMENT while the
server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from pydantic import SecretStr
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.support.interop import MODEL, lecture_repository
from tests.support.servers import Running, running_server

TOKEN = "log-and-trace-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
GRPC_ADMIN = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case
DEFAULT_TRACE = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                 "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"}  # fmt: skip


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = lecture_repository(tmp_path_factory.mktemp("settings"))
    settings = Settings(
        model_repository=repo, providers=["CPUExecutionProvider"], admin_token=SecretStr(TOKEN)
    )
    with running_server(settings) as running:
        yield running


def test_tritonclient_http_log_settings_round_trip(admin_server: Running) -> None:
    client = triton_http.InferenceServerClient(admin_server.address)
    try:
        before = client.get_log_settings()
        switches = {"log_info": True, "log_warning": True, "log_error": True}
        assert before == {"log_file": "", **switches, "log_verbose_level": 0, "log_format": "text"}
        changed = client.update_log_settings({"log_verbose_level": 1}, headers=ADMIN)
        assert changed == {**before, "log_verbose_level": 1}
        assert client.get_log_settings() == changed
        restored = client.update_log_settings({"log_verbose_level": 0}, headers=ADMIN)
        assert restored == before
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.update_log_settings({"log_info": False})  # no token: 401
    finally:
        client.close()


def test_tritonclient_grpc_log_settings_round_trip(admin_server: Running) -> None:
    client = triton_grpc.InferenceServerClient(admin_server.grpc_url)
    try:
        before = client.get_log_settings(as_json=True)["settings"]
        assert before["log_verbose_level"] == {"uint32_param": 0}
        assert before["log_info"] == {"bool_param": True}
        client.update_log_settings({"log_warning": False}, headers=GRPC_ADMIN)
        after = client.get_log_settings(as_json=True)["settings"]
        assert after["log_warning"] == {"bool_param": False}
        client.update_log_settings({"log_warning": True}, headers=GRPC_ADMIN)
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.update_log_settings({"log_info": False})
    finally:
        client.close()


def test_tritonclient_http_trace_settings_round_trip(admin_server: Running) -> None:
    client = triton_http.InferenceServerClient(admin_server.address)
    try:
        assert client.get_trace_settings() == DEFAULT_TRACE
        model = client.update_trace_settings(MODEL, {"trace_rate": "5"}, headers=ADMIN)
        assert model == {**DEFAULT_TRACE, "trace_rate": "5"}
        assert client.get_trace_settings() == DEFAULT_TRACE  # the global ones are untouched
        glob = client.update_trace_settings(settings={"trace_count": "10"}, headers=ADMIN)
        assert glob == {**DEFAULT_TRACE, "trace_count": "10"}
        cleared = client.update_trace_settings(MODEL, {"trace_rate": None}, headers=ADMIN)
        assert cleared == {**DEFAULT_TRACE, "trace_count": "10"}
        client.update_trace_settings(settings={"trace_count": None}, headers=ADMIN)
        assert client.get_trace_settings(MODEL) == DEFAULT_TRACE
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert "trace" in client.get_server_metadata()["extensions"]
    finally:
        client.close()


def test_tritonclient_grpc_trace_settings_round_trip(admin_server: Running) -> None:
    client = triton_grpc.InferenceServerClient(admin_server.grpc_url)
    try:
        got = client.get_trace_settings(as_json=True)["settings"]
        assert {k: v["value"] for k, v in got.items()} == {
            k: v if isinstance(v, list) else [v] for k, v in DEFAULT_TRACE.items()
        }
        client.update_trace_settings(MODEL, {"trace_rate": "7"}, headers=GRPC_ADMIN)
        got = client.get_trace_settings(MODEL, as_json=True)["settings"]
        assert got["trace_rate"]["value"] == ["7"]
        client.update_trace_settings(MODEL, {"trace_rate": None}, headers=GRPC_ADMIN)
        got = client.get_trace_settings(MODEL, as_json=True)["settings"]
        assert got["trace_rate"]["value"] == ["1000"]
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.update_trace_settings(settings={"trace_rate": "1"})
        with pytest.raises(InferenceServerException, match=r"not found|unknown"):
            client.get_trace_settings("no-such-model")
        assert "logging" in client.get_server_metadata(as_json=True)["extensions"]
    finally:
        client.close()


HOSTILE_LOG: list[Any] = [
    {"log_file": "/etc/passwd"}, {"log_format": "ISO8601"}, {"log_verbose_level": -1},
    {"log_verbose_level": 2**40}, {"log_verbose_level": "1"}, {"log_info": "yes"},
    {"log_info": None}, {"nope": True}, {"x" * 100_000: 1}, [], "text", 7,
]  # fmt: skip
HOSTILE_TRACE: list[Any] = [
    {"trace_level": ["TENSORS"]}, {"trace_level": ["OFF", "TIMESTAMPS"]}, {"trace_level": []},
    {"trace_level": [1]}, {"trace_rate": "0"}, {"trace_rate": "1e9999"}, {"trace_rate": True},
    {"trace_count": "-2"}, {"trace_count": str(2**64)}, {"trace_file": "/tmp/x"},
    {"trace_mode": "triton"}, {"log_frequency": "5"}, {"other": "1"}, [], None,
]  # fmt: skip


@pytest.mark.parametrize("body", HOSTILE_LOG)
def test_hostile_log_settings_are_400_and_change_nothing(admin_server: Running, body: Any) -> None:
    url = f"{admin_server.url}/v2/logging"
    before = httpx.get(url).json()
    answer = httpx.post(url, json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert "error" in answer.json()
    assert httpx.get(url).json() == before


@pytest.mark.parametrize("body", HOSTILE_TRACE)
@pytest.mark.parametrize("path", ["/v2/trace/setting", f"/v2/models/{MODEL}/trace/setting"])
def test_hostile_trace_settings_are_400_and_change_nothing(
    admin_server: Running, body: Any, path: str
) -> None:
    url = f"{admin_server.url}{path}"
    answer = httpx.post(url, json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert httpx.get(url).json() == DEFAULT_TRACE


def test_trace_settings_of_an_unknown_model_are_404(admin_server: Running) -> None:
    url = f"{admin_server.url}/v2/models/nope/trace/setting"
    assert httpx.get(url).status_code == 404
    assert httpx.post(url, json={"trace_rate": "1"}, headers=ADMIN).status_code == 404


def test_garbage_settings_messages_over_grpc_are_invalid_argument(admin_server: Running) -> None:
    with grpc.insecure_channel(admin_server.grpc_url) as channel:
        for method in ("LogSettings", "TraceSetting"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as raised:
                call(b"\xff\xff\xff", metadata=[("authorization", f"Bearer {TOKEN}")])
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        request = service_pb2.LogSettingsRequest()
        request.settings["log_file"].string_param = "/tmp/elsewhere"
        log_call = channel.unary_unary(
            "/inference.GRPCInferenceService/LogSettings",
            request_serializer=service_pb2.LogSettingsRequest.SerializeToString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            log_call(request, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "log_file cannot be changed" in str(raised.value.details())
    client = triton_grpc.InferenceServerClient(admin_server.grpc_url)
    try:
        assert client.is_model_ready(MODEL)
    finally:
        client.close()
