"""gRPC calls that send nothing hold no working place, on real servers: grpc's own limit counted
a call from its headers, so 1,024 calls that never sent their message (a stream that never
yields, or a unary method called as one) kept every other gRPC client at RESOURCE_EXHAUSTED.
Now such calls wait, at most GRPC_MAX_WAITING_CALLS of them (the longest waiting is ended to
make room) and a unary one at most BODY_TIMEOUT_S, while calls with work go on being served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.grpc.admission import EVICTED
from service.settings import Settings
from tests.support.grpc_calls import infer_request
from tests.support.models import make_model_repo
from tests.support.servers import running_server
from tests.support.tensor_models import FP32, tensor_repository

SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_repo(tmp_path_factory.mktemp("idle"), lecture=False)


def settings_for(repo: Path, **changes: Any) -> Settings:
    return Settings(
        model_repository=repo, providers=["CPUExecutionProvider"], poll_interval_s=0, **changes
    )


async def nothing() -> AsyncIterator[Any]:
    """A client's messages that never come (nor its end)."""
    await asyncio.Event().wait()
    yield service_pb2.ServerLiveRequest()


def silent_call(channel: grpc.aio.Channel, method: str) -> Any:
    """``method`` called as a client stream that sends nothing: grpc's client lets any method be
    called so, and the server sees a call waiting for its message."""
    call = channel.stream_stream(
        SERVICE + method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=lambda data: data,
    )
    return call(nothing())


async def outcome(call: Any, wait_s: float) -> str:
    """``call``'s status after at most ``wait_s`` (``open`` if it has not ended)."""
    try:
        await asyncio.wait_for(call.code(), wait_s)
    except TimeoutError:
        return "open"
    return f"{(await call.code()).name}: {await call.details()}"


def test_calls_that_send_nothing_keep_no_other_call_out(repo: Path) -> None:
    """20 silent calls against 2 working places and 8 waiting ones: every other call is served,
    and those that waited longest were ended, with a reason, to make room."""
    settings = settings_for(repo, grpc_max_concurrent_rpcs=2, grpc_max_waiting_calls=8)
    with running_server(settings) as server:

        async def run() -> tuple[list[str], list[str]]:
            async with grpc.aio.insecure_channel(server.grpc_url) as silent:
                methods = ["ModelInfer", "ModelStreamInfer", "ServerLive", "ModelReady"] * 5
                calls = []
                for method in methods:
                    calls.append(silent_call(silent, method))
                    await asyncio.sleep(0.02)  # in this order (oldest first) at the server
                async with grpc.aio.insecure_channel(server.grpc_url) as other:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(other)
                    live = await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
                    answer = await stub.ModelInfer(infer_request(), timeout=10)
                    served = [str(live.live), answer.model_name]
                ended = [await outcome(call, 5 if i < 13 else 0.5) for i, call in enumerate(calls)]
                for call in calls:
                    call.cancel()
                return served, ended

        served, ended = asyncio.run(run())
        assert served == ["True", "tiny"]
        # 12 made room for the last 8; the first served call waited too (while its message
        # came) and pushed one more out, and the second took the room the first left
        assert ended[:13] == [f"UNAVAILABLE: {EVICTED}"] * 13, ended
        assert ended[13:] == ["open"] * 7, ended


def test_a_unary_call_whose_message_never_comes_ends_after_the_body_timeout(repo: Path) -> None:
    with running_server(settings_for(repo, body_timeout_s=1)) as server:

        async def run() -> tuple[str, float]:
            async with grpc.aio.insecure_channel(server.grpc_url) as channel:
                start = time.monotonic()
                status = await outcome(silent_call(channel, "ModelInfer"), 10)
                return status, time.monotonic() - start

        status, took_s = asyncio.run(run())
        assert status == "DEADLINE_EXCEEDED: the request message did not arrive within 1 s"
        assert 0.9 < took_s < 5


def test_an_idle_stream_holds_no_working_place_and_stays_open(repo: Path) -> None:
    """A stream that has been answered and sends nothing more is not timed out (a client may
    keep one open between requests) and holds no working place; a request it sends while a
    unary call holds the one place is answered so, not run, and the stream goes on."""
    settings = settings_for(
        repo, grpc_max_concurrent_rpcs=1, body_timeout_s=1, max_batch_delay_ms=400
    )  # each request waits 0.4 s in the batcher, holding its place
    with running_server(settings) as server:

        async def run() -> tuple[list[str], str]:
            async with grpc.aio.insecure_channel(server.grpc_url) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                requests: asyncio.Queue[Any] = asyncio.Queue()

                async def messages() -> AsyncIterator[Any]:
                    while True:
                        yield await requests.get()

                stream = stub.ModelStreamInfer(messages())

                async def on_stream() -> str:
                    requests.put_nowait(infer_request())
                    return (await stream.read()).error_message or "answered"

                answers = [await on_stream()]
                await asyncio.sleep(1.5)  # past the body timeout, sending nothing
                unary = asyncio.ensure_future(stub.ModelInfer(infer_request(), timeout=10))
                await asyncio.sleep(0.2)  # the unary call holds the place
                answers.append(await on_stream())
                answers.append((await unary).model_name)
                answers.append(await on_stream())
                state = await outcome(stream, 0.2)
                stream.cancel()
                return answers, state

        answers, state = asyncio.run(run())
        refused = "the server is working on 1 gRPC calls, its limit (GRPC_MAX_CONCURRENT_RPCS)"
        assert answers[0] == "answered" and answers[2:] == ["tiny", "answered"], answers
        assert answers[1].startswith(refused), answers
        assert state == "open"


def test_a_stream_whose_client_does_not_read_its_answers_holds_no_working_place(
    tmp_path: Path,
) -> None:
    """A stream whose answers wait on a client that does not read them (HTTP/2 flow control)
    had its requests count as at work until sent: two such streams held both places for good
    (the reviewer's find). A stream is at work while its answers are computed."""
    repo = tensor_repository(tmp_path)
    settings = settings_for(repo, grpc_max_concurrent_rpcs=1)
    with running_server(settings) as server:

        async def run() -> str:
            request = service_pb2.ModelInferRequest(model_name=FP32)
            tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[1024, 4])
            tensor.contents.fp32_contents.extend([0.5] * 4096)  # a 16 kB answer each

            async def requests() -> AsyncIterator[Any]:
                for _ in range(100):
                    yield request
                await asyncio.Event().wait()

            options = [("grpc.http2.bdp_probe", 0)]  # its window stays small: it fills
            async with grpc.aio.insecure_channel(server.grpc_url, options=options) as hoarder:
                unread = service_pb2_grpc.GRPCInferenceServiceStub(hoarder).ModelStreamInfer(
                    requests()
                )
                await asyncio.sleep(2)  # every answer computed; most wait on the client
                async with grpc.aio.insecure_channel(server.grpc_url) as other:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(other)
                    answer = await stub.ModelInfer(infer_request(), timeout=10)
                unread.cancel()
                return str(answer.model_name)

        assert asyncio.run(run()) == "tiny"
