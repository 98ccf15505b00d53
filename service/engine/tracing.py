"""OpenTelemetry spans for inference requests: off by default, and then nothing is made (each
hook is one check of ``TRACER``). When on (Triton's trace extension sets ``trace_level``), a
sampled request's span continues the client's W3C ``traceparent`` and holds ``decode``,
``queue``, ``encode``; the batcher's ``batch`` span links every request it served.

The SDK is configured by the standard ``OTEL_*`` variables when tracing first turns on:
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over HTTP; ``console``; ``none``), the OTLP
exporter's endpoint and headers, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``, the sampler."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

NAME = "cifar-serve"
PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[Any] = nullcontext()

TRACER: Tracer | None = None  # None: tracing is off
_provider: trace.TracerProvider | None = None  # made from OTEL_* on first use, or installed
Queued = tuple[SpanContext, int]  # a traced request waiting in a batcher: its span, since (ns)


def install(provider: trace.TracerProvider | None) -> None:
    """Use ``provider`` (a test's, with an in-memory exporter) instead of one from OTEL_*."""
    global _provider, TRACER
    _provider = provider
    TRACER = None


def switch(on: bool) -> None:
    """Tracing on (building the SDK's provider from OTEL_* the first time) or off."""
    global _provider, TRACER
    if not on:
        TRACER = None
        return
    if _provider is None:
        _provider = provider_from_environment()
    TRACER = _provider.get_tracer(NAME)


def provider_from_environment() -> trace.TracerProvider:
    """The SDK's provider with the exporter ``OTEL_TRACES_EXPORTER`` names; nothing connects
    anywhere until a span is exported."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # Not flushed at the interpreter's exit (the SDK's default, whose OTLP retries kept a
    # stopping server alive over 20 s while its collector was away): ``close`` bounds it.
    resource = Resource.create({"service.name": NAME})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def close(timeout_s: float) -> None:
    """Export the spans still queued, for at most ``timeout_s`` (a thread left behind after
    that ends with the process): a server stopping must not wait on an absent collector."""
    provider = _provider
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        flusher = threading.Thread(target=shutdown, name="trace-flush", daemon=True)
        flusher.start()
        flusher.join(timeout_s)


def request_span(model: str, carrier: Mapping[str, str]) -> AbstractContextManager[Any]:
    """One sampled request's span (the caller decided to sample), a child of the client's
    ``traceparent`` in ``carrier`` when it sends one."""
    tracer = TRACER
    if tracer is None:
        return _OFF
    parent = PROPAGATOR.extract(carrier)
    attributes = {"model": model}
    return tracer.start_as_current_span("infer", parent, SpanKind.SERVER, attributes=attributes)


def step(name: str) -> AbstractContextManager[Any]:
    """A child span of the current request's (``decode``, ``encode``); nothing if untraced."""
    tracer = TRACER
    if tracer is None or not trace.get_current_span().is_recording():
        return _OFF
    return tracer.start_as_current_span(name)


def queued() -> Queued | None:
    """What a batcher keeps of a traced request joining its queue; None when untraced."""
    if TRACER is None:
        return None
    span = trace.get_current_span()
    return (span.get_span_context(), time.time_ns()) if span.is_recording() else None


@contextlib.contextmanager
def _batch(tracer: Tracer, waiting: list[Queued], rows: int) -> Iterator[None]:
    taken = time.time_ns()
    for context, since in waiting:  # each request's time in the queue, under its own span
        parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
        tracer.start_span("queue", parent, start_time=since).end(end_time=taken)
    links = [Link(context) for context, _ in waiting]
    attributes = {"batch.rows": rows, "batch.requests": len(waiting)}
    with tracer.start_as_current_span("batch", links=links, attributes=attributes):
        yield


def batch_span(traces: Iterable[Queued | None], rows: int) -> AbstractContextManager[Any]:
    """Around one batch's run: a ``batch`` span linking the traced requests it serves (their
    ``queue`` spans end as it starts); nothing when none of them is traced."""
    tracer = TRACER
    if tracer is None:
        return _OFF
    waiting = [t for t in traces if t is not None]
    return _batch(tracer, waiting, rows) if waiting else _OFF


def grpc_carrier(metadata: Iterable[Any] | None) -> dict[str, str]:
    """``traceparent`` and ``tracestate`` from a gRPC call's metadata (nothing when off)."""
    if TRACER is None or not metadata:
        return {}
    return {m.key: m.value for m in metadata if m.key in ("traceparent", "tracestate")}


def asgi_carrier(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``traceparent`` and ``tracestate`` from an ASGI scope's headers (nothing when off)."""
    if TRACER is None:
        return {}
    wanted = (b"traceparent", b"tracestate")
    return {k.decode(): v.decode("latin-1") for k, v in headers if k in wanted}
