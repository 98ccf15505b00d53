"""A stopping server exports the spans it still holds within a bound, never waiting on an absent
collector: the SDK's own flush at the interpreter's exit kept one alive over 20 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import cast

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from service.engine import tracing


class AbsentCollector(SpanExporter):
    """An exporter whose collector never answers (until the test lets it go)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_close_waits_for_the_exporter_no_longer_than_its_bound() -> None:
    exporter = AbsentCollector()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing.install(provider)
    try:
        tracing.switch(True)
        assert tracing.TRACER is not None
        with tracing.TRACER.start_as_current_span("infer"):
            pass
        start = time.monotonic()
        tracing.close(0.3)
        assert time.monotonic() - start < 3  # the collector never answered: the bound held
        assert exporter.exported == 0
    finally:
        exporter.release.set()
        tracing.install(None)


def test_the_providers_made_from_the_environment_do_not_flush_at_exit() -> None:
    provider = cast(TracerProvider, tracing.provider_from_environment())
    assert getattr(provider, "_atexit_handler", None) is None  # close() flushes, bounded
    provider.shutdown()
