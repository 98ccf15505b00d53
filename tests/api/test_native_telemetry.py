"""FastAPI's own OpenTelemetry stays off even where the process has a global tracer provider:
the service's spans are the ones Triton's trace extension samples (docs/api.md, Tracing), not one
per request of FastAPI's, and the check per request is spared (docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, sys
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # global: what FastAPI's own telemetry would use

from service.api.rest.app import create_app
from service.settings import Settings

app = create_app(Settings(model_repository=sys.argv[1], grpc_port=-1))


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.post("/v2/models/none/infer", json={})).status_code == 404


asyncio.run(main())
print(len(exporter.get_finished_spans()))
"""


def test_a_global_tracer_provider_gets_no_spans_from_fastapi_itself(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0"
