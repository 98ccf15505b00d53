"""OpenTelemetry tracing through a real server in this process, spans caught by the SDK's
in-memory exporter (nothing leaves the process): off by default (no spans at all); when on, a
client's ``traceparent`` (REST header, gRPC metadata) parents the request's ``infer`` span with
``decode``, ``queue`` and ``encode`` under it, and the ``batch`` span links every request it ran."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from service.engine import tracing
from service.settings import Settings
from tests.support.interop import MODEL, lecture_repository
from tests.support.servers import Running, running_server, wait_until

TOKEN = "trace-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
IMAGE = np.zeros((1, 32, 32, 3), np.uint8)
BODY = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                    "data": IMAGE.ravel().tolist()}]}  # fmt: skip


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    try:
        yield spans
    finally:
        tracing.install(None)
        tracing.switch(False)


@pytest.fixture
def server(tmp_path: Path, exporter: InMemorySpanExporter) -> Iterator[Running]:
    settings = Settings(
        model_repository=lecture_repository(tmp_path),
        providers=["CPUExecutionProvider"],
        admin_token=SecretStr(TOKEN),
        max_batch_delay_ms=200,  # requests sent together share a batch
    )
    with running_server(settings) as running:
        yield running


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_tracing_is_off_by_default_and_makes_no_spans(
    server: Running, exporter: InMemorySpanExporter
) -> None:
    url = f"{server.url}/v2/models/{MODEL}/infer"
    for _ in range(3):
        assert httpx.post(url, json=BODY, headers={"traceparent": TRACEPARENT}).status_code == 200
    assert tracing.TRACER is None
    assert exporter.get_finished_spans() == ()


def test_rest_traceparent_continues_into_decode_queue_batch_encode(
    server: Running, exporter: InMemorySpanExporter
) -> None:
    on = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
    assert httpx.post(f"{server.url}/v2/trace/setting", json=on, headers=ADMIN).status_code == 200
    url = f"{server.url}/v2/models/{MODEL}/infer"
    parents = [f"00-{TRACE_ID[:-1]}{i}-{PARENT_ID}-01" for i in range(3)]
    answers: list[int] = []

    def send(traceparent: str) -> None:
        headers = {"traceparent": traceparent}
        answers.append(httpx.post(url, json=BODY, headers=headers).status_code)

    threads = [threading.Thread(target=send, args=(p,)) for p in parents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 3
    wait_until(lambda: len(named(exporter.get_finished_spans(), "infer")) == 3, 5, "3 spans")
    spans = exporter.get_finished_spans()
    requests = named(spans, "infer")
    assert {format(s.context.trace_id, "032x") for s in requests} == {p[3:35] for p in parents}
    for request in requests:
        assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT_ID
        children = [s for s in spans if s.parent and s.parent.span_id == request.context.span_id]
        assert sorted(s.name for s in children) == ["decode", "encode", "queue"]
    batches = named(spans, "batch")
    linked = {link.context.span_id for batch in batches for link in batch.links}
    assert linked == {r.context.span_id for r in requests}
    assert any(len(batch.links) > 1 for batch in batches)  # one run served several requests


def test_grpc_traceparent_metadata_continues_into_spans(
    server: Running, exporter: InMemorySpanExporter
) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        client.update_trace_settings(
            settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        tensor = triton_grpc.InferInput("images", [1, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(IMAGE)
        client.infer(MODEL, [tensor], headers={"traceparent": TRACEPARENT})
    finally:
        client.close()
    wait_until(lambda: len(named(exporter.get_finished_spans(), "batch")) == 1, 5, "the batch")
    spans = exporter.get_finished_spans()
    (request,) = named(spans, "infer")
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT_ID
    (batch,) = named(spans, "batch")
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]


def test_trace_rate_and_count_decide_which_requests_are_traced(
    server: Running, exporter: InMemorySpanExporter
) -> None:
    on = {"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "3"}
    assert httpx.post(f"{server.url}/v2/trace/setting", json=on, headers=ADMIN).status_code == 200
    url = f"{server.url}/v2/models/{MODEL}/infer"
    for _ in range(10):
        assert httpx.post(url, json=BODY).status_code == 200
    assert len(named(exporter.get_finished_spans(), "infer")) == 3  # the 1st, 3rd and 5th
    assert httpx.get(f"{server.url}/v2/trace/setting").json()["trace_count"] == "0"


def test_without_dynamic_batching_each_run_links_its_one_request(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    settings = Settings(
        model_repository=lecture_repository(tmp_path),
        providers=["CPUExecutionProvider"],
        admin_token=SecretStr(TOKEN),
        dynamic_batching=False,
    )
    with running_server(settings, grpc=False) as server:
        on = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
        url = f"{server.url}/v2/trace/setting"
        assert httpx.post(url, json=on, headers=ADMIN).status_code == 200
        infer = f"{server.url}/v2/models/{MODEL}/infer"
        assert httpx.post(infer, json=BODY, headers={"traceparent": TRACEPARENT}).status_code == 200
    spans = exporter.get_finished_spans()
    (request,) = named(spans, "infer")
    (batch,) = named(spans, "batch")
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    assert format(request.context.trace_id, "032x") == TRACE_ID
