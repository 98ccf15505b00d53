"""Graceful shutdown of ``python -m service`` (a real process): on SIGTERM it stops accepting
REST connections and gRPC calls at once, finishes the requests in flight (REST and gRPC), and
exits 0; a client running throughout sees no failure other than refused connections after the
stop began. Its logs are JSON lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.models import make_model_repo
from tests.support.servers import server_process, service_command
from tests.support.slow_models import write_slow_model

GOOD = json.dumps({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                               "data": [0] * 3072}]}).encode()  # fmt: skip
# What a client may see once the stop began: the listening socket is gone (refused), or a
# connection still in the kernel's backlog is reset before the server ever read it.
REFUSED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)


def grpc_live_code(address: str) -> grpc.StatusCode:
    """The status of a ServerLive call on a fresh channel to ``address``."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "SHUTDOWN_TIMEOUT_S": "15",
        "POLL_INTERVAL_S": "0",
        "PROVIDERS": "CPUExecutionProvider",
    }
    command = service_command("--model-repository", str(repo), "--log-level", "info")
    with server_process(command, env=env, how=signal.SIGKILL) as server:
        server.wait_ready()
        port, url = server.rest_port, server.url
        assert grpc_live_code(server.grpc_url) == grpc.StatusCode.OK

        # A client running throughout, a fresh connection per request.
        stop_sent = threading.Event()
        finished = threading.Event()
        served: list[int] = []
        failures: list[tuple[bool, str]] = []  # (after the stop began, what)

        def client() -> None:
            limits = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=url, timeout=30, limits=limits) as http:
                while not finished.is_set():
                    after = stop_sent.is_set()
                    try:
                        response = http.post("/v2/models/tiny/infer", content=GOOD)
                    except REFUSED as exc:
                        failures.append((after, repr(exc)))
                        if after:
                            return
                        continue
                    served.append(response.status_code)

        runner = threading.Thread(target=client, daemon=True)
        runner.start()
        while len(served) < 20:
            time.sleep(0.05)
            assert runner.is_alive()

        # A request in flight: headers and half its body are in when the stop begins.
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(GOOD)}\r\n\r\n").encode()  # fmt: skip
        in_flight.sendall(head + GOOD[: len(GOOD) // 2])
        time.sleep(0.3)
        stop_sent.set()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)

        with pytest.raises(ConnectionRefusedError):  # no new connections...
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert grpc_live_code(server.grpc_url) == grpc.StatusCode.UNAVAILABLE  # nor gRPC calls
        assert server.process.poll() is None  # ...but still running: one request is not finished
        in_flight.sendall(GOOD[len(GOOD) // 2 :])
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = in_flight.recv(65536)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
        in_flight.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

        assert server.process.wait(timeout=30) == 0
        finished.set()
        runner.join(timeout=30)
    logs = server.log
    assert served and set(served) == {200}
    assert [f for f in failures if not f[0]] == [], failures  # nothing failed before the stop
    lines = [line for line in logs.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    messages = " ".join(r["message"] for r in records)
    assert "Waiting for connections to close" in messages or "Shutting down" in messages
    assert all(r["level"] not in ("ERROR", "CRITICAL") for r in records), messages


def test_a_grpc_call_in_flight_at_sigterm_is_answered_while_new_ones_are_refused(
    tmp_path: Path,
) -> None:
    repo = write_slow_model(make_model_repo(tmp_path, lecture=False), "slow", seconds=2.0)
    env = {**os.environ, "SHUTDOWN_TIMEOUT_S": "15", "POLL_INTERVAL_S": "0",
           "PROVIDERS": "CPUExecutionProvider", "INTRA_OP_THREADS": "1"}  # fmt: skip
    command = service_command("--model-repository", str(repo))
    with server_process(command, env=env, how=signal.SIGKILL) as server:
        server.wait_ready()
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=[1, 32, 32, 3]
        )
        request = service_pb2.ModelInferRequest(model_name="slow", inputs=[tensor])
        request.raw_input_contents.append(bytes(3072))
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(
                request, timeout=60
            )
            time.sleep(0.5)  # the call is running on the slow model
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert grpc_live_code(server.grpc_url) == grpc.StatusCode.UNAVAILABLE
            assert list(call.result().outputs[0].shape) == [1, 10]
        assert server.process.wait(timeout=30) == 0
