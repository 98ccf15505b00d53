"""The server's own view of a load run, as perf_analyzer prints it beside the client's latency:
per-request queue and compute times from Triton's statistics extension (REST or gRPC), read when
the measured window opens and when it closes. A server without the extension gives None."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
Totals = dict[str, int]


def rest_statistics(address: str, infer_path: str) -> Totals | None:
    """Totals of the model that ``infer_path`` names, from ``GET .../stats``."""
    match = INFER_PATH.fullmatch(infer_path.split("?")[0])
    if match is None:
        return None
    name, version = match.groups()
    where = f"/versions/{version}" if version else ""
    try:
        url = f"http://{address}/v2/models/{name}{where}/stats"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        return totals(body["model_stats"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def grpc_statistics(address: str, model: str) -> Totals | None:
    """Totals of ``model`` from gRPC ``ModelStatistics``."""
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelStatistics(
                service_pb2.ModelStatisticsRequest(name=model), timeout=10
            )
    except grpc.RpcError:
        return None
    stats = json_format.MessageToDict(answer, preserving_proto_field_name=True)
    return totals(stats.get("model_stats", []))


def totals(model_stats: Iterable[Mapping[str, Any]]) -> Totals:
    """Counts and nanoseconds summed over the versions listed (protobuf's JSON has strings)."""
    out: Totals = {}
    for stats in model_stats:
        inference = stats.get("inference_stats", {})
        for key in ("success", *PHASES):
            for field in ("count", "ns"):
                name = f"{key}_{field}"
                out[name] = out.get(name, 0) + int(inference.get(key, {}).get(field, 0))
        out["executions"] = out.get("executions", 0) + int(stats.get("execution_count", 0))
        out["inferences"] = out.get("inferences", 0) + int(stats.get("inference_count", 0))
    return out


def server_side(before: Totals | None, after: Totals | None) -> dict[str, float] | None:
    """What the server measured between two readings: requests, runs, and per request the mean
    queue, compute input, compute infer and compute output times in ms."""
    if before is None or after is None:
        return None
    requests = after.get("success_count", 0) - before.get("success_count", 0)
    if requests <= 0:
        return None
    executions = after.get("executions", 0) - before.get("executions", 0)
    out: dict[str, float] = {
        "requests": requests,
        "executions": executions,
        "images_per_execution": (after["inferences"] - before["inferences"]) / max(1, executions),
    }
    for phase in PHASES:
        count = after[f"{phase}_count"] - before[f"{phase}_count"]
        out[f"{phase}_ms"] = (after[f"{phase}_ns"] - before[f"{phase}_ns"]) / max(1, count) / 1e6
    return out


def describe(summary: Mapping[str, Any]) -> str:
    """One line: the client's p50 and p99, and the server's per-request times beside them."""
    line = f"client: p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms"
    server = summary.get("server")
    if not server:
        return line + "; server: no statistics extension"
    return line + (
        f"; server per request: queue {server['queue_ms']:.3f} ms + compute input "
        f"{server['compute_input_ms']:.3f} + infer {server['compute_infer_ms']:.3f} + output "
        f"{server['compute_output_ms']:.3f} ms ({server['images_per_execution']:.1f} images/run)"
    )


async def measured_window(
    read: Callable[[], Totals | None], warmup_s: float, window: Any
) -> dict[str, float] | None:
    """Read ``read()`` after ``warmup_s`` and again once ``window`` (an awaitable) is done."""

    async def opening() -> Totals | None:
        await asyncio.sleep(warmup_s)
        return await asyncio.to_thread(read)

    before = asyncio.ensure_future(opening())
    await window
    return server_side(await before, await asyncio.to_thread(read))
