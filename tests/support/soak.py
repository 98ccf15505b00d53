"""The soak's load (``tests/system/test_soak.py``): closed-loop clients that cycle through every
endpoint (v2 infer as JSON, binary tensors and gRPC, v1 :predict and :classify, health, metadata,
the repository index, layers, metrics) while the server's resident memory is sampled each second.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

JSON = {"content-type": "application/json"}
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN}
GRPC_INFER = "gRPC ModelInfer"  # the one operation of the mix not in the OpenAPI document


@dataclass(frozen=True)
class SoakSettings:
    """How long and how hard: SOAK_SECONDS (20 in make test, 180 in make soak), SOAK_WARMUP_S
    (the memory baseline is taken from there; default 40 % of the run, at most 30 s),
    SOAK_CONCURRENCY (64) and the growth allowed after the warm-up."""

    seconds: float = 20.0
    warmup_s: float = 8.0
    concurrency: int = 64
    model: str = "cifar10_cnn"
    max_rss_growth: float = 0.10

    @classmethod
    def from_env(cls) -> SoakSettings:
        seconds = float(os.environ.get("SOAK_SECONDS", cls.seconds))
        warmup_s = float(os.environ.get("SOAK_WARMUP_S", min(30.0, 0.4 * seconds)))
        concurrency = int(os.environ.get("SOAK_CONCURRENCY", cls.concurrency))
        return cls(seconds, warmup_s, concurrency)


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Bodies:
    """The request bodies of the mix, made once."""

    def __init__(self, model: str) -> None:
        rng = np.random.default_rng(0)
        one = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
        four = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8"}
        self.v2_json = json.dumps({"inputs": [{**tensor, "data": one.ravel().tolist()}]})
        binary = {
            **tensor,
            "shape": [4, 32, 32, 3],
            "parameters": {"binary_data_size": four.nbytes},
        }
        header = json.dumps(
            {"inputs": [binary], "parameters": {"binary_data_output": True}}
        ).encode()
        self.v2_binary = header + four.tobytes()
        self.v2_binary_length = str(len(header))
        self.image = png(1)
        self.predict = json.dumps(
            {"instances": [{"b64": base64.b64encode(png(2)).decode()}, one[0].tolist()]}
        )
        self.grpc_request = service_pb2.ModelInferRequest(
            model_name=model,
            inputs=[service_pb2.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=[1, 32, 32, 3])],
            raw_input_contents=[one.tobytes()],
        )  # fmt: skip


class Load:
    """The request mix and what came back, per endpoint. Each call is named, and says which
    documented operation (``METHOD /path``, as the OpenAPI document writes it) it exercises."""

    def __init__(self, http: httpx.AsyncClient, stub: Any, model: str) -> None:
        self.http, self.stub, self.model = http, stub, model
        self.bodies = Bodies(model)
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.dropped: Counter[str] = Counter()
        infer = "POST /v2/models/{name}/infer"
        self.calls: list[tuple[str, str, Callable[[], Awaitable[str]]]] = [
            ("v2 infer json", infer, self._v2_json),
            ("v2 infer binary", infer, self._v2_binary),
            ("grpc infer", GRPC_INFER, self._grpc),
            ("v1 predict", "POST /v1/models/{name}:predict", self._predict),
            ("v1 classify", "POST /v1/models/{name}:classify", self._classify),
            ("v2 infer json", infer, self._v2_json),
            ("health", "GET /v2/health/ready", lambda: self._get("/v2/health/ready")),
            ("metadata", "GET /v2/models/{name}", lambda: self._get(f"/v2/models/{model}")),
            ("v1 models", "GET /v1/models", lambda: self._get("/v1/models")),
            ("layers", "GET /v1/models/{name}/layers",
             lambda: self._get(f"/v1/models/{model}/layers")),
            ("metrics", "GET /metrics", lambda: self._get("/metrics")),
            ("repository index", "POST /v2/repository/index", self._index),
        ]  # fmt: skip

    async def _status(self, response: Awaitable[httpx.Response]) -> str:
        answer = await response
        await answer.aread()
        return str(answer.status_code)

    def _get(self, path: str) -> Awaitable[str]:
        return self._status(self.http.get(path))

    def _index(self) -> Awaitable[str]:
        return self._status(self.http.post("/v2/repository/index"))

    def _v2_json(self) -> Awaitable[str]:
        url = f"/v2/models/{self.model}/infer"
        return self._status(self.http.post(url, content=self.bodies.v2_json, headers=JSON))

    def _v2_binary(self) -> Awaitable[str]:
        headers = {"Inference-Header-Content-Length": self.bodies.v2_binary_length}
        url = f"/v2/models/{self.model}/infer"
        return self._status(self.http.post(url, content=self.bodies.v2_binary, headers=headers))

    def _predict(self) -> Awaitable[str]:
        url = f"/v1/models/{self.model}:predict"
        return self._status(self.http.post(url, content=self.bodies.predict, headers=JSON))

    def _classify(self) -> Awaitable[str]:
        files = {"file": ("image.png", self.bodies.image, "image/png")}
        return self._status(self.http.post(f"/v1/models/{self.model}:classify", files=files))

    async def _grpc(self) -> str:
        try:
            await self.stub.ModelInfer(self.bodies.grpc_request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return f"grpc {exc.code().name}"
        return "grpc OK"

    async def worker(self, index: int, stop_at: float) -> None:
        step = index
        while time.monotonic() < stop_at:
            name, _, call = self.calls[step % len(self.calls)]
            step += 1
            try:
                status = await call()
            except (httpx.TransportError, OSError) as exc:
                self.dropped[f"{name}: {type(exc).__name__}"] += 1
                continue
            self.statuses[(name, status)] += 1


def is_fault(status: str) -> bool:
    if status.startswith("grpc "):
        return status[5:] in {code.name for code in SERVER_FAULTS}
    return status.startswith("5")


async def run_load(
    settings: SoakSettings, rest_port: int, grpc_port: int, pid: int
) -> tuple[Load, list[tuple[float, int]], float]:
    """The load for ``settings.seconds``; the mix, the (second, RSS) samples and the seconds."""
    process = psutil.Process(pid)
    n = settings.concurrency
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    base_url = f"http://127.0.0.1:{rest_port}"
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        load = Load(http, service_pb2_grpc.GRPCInferenceServiceStub(channel), settings.model)
        started = time.monotonic()
        stop_at = started + settings.seconds
        workers = [asyncio.create_task(load.worker(i, stop_at)) for i in range(n)]
        samples: list[tuple[float, int]] = []
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - started, process.memory_info().rss))
            await asyncio.sleep(1.0)
        await asyncio.gather(*workers)
        samples.append((time.monotonic() - started, process.memory_info().rss))
        return load, samples, time.monotonic() - started


def soak(settings: SoakSettings, rest_port: int, grpc_port: int, pid: int) -> dict[str, Any]:
    """Run the load and sum it up: requests, faults, drops, per endpoint, memory growth from
    the end of the warm-up to the end of the run."""
    load, samples, seconds = asyncio.run(run_load(settings, rest_port, grpc_port, pid))
    after_warm_up = [rss for t, rss in samples if t >= settings.warmup_s] or [samples[-1][1]]
    baseline, final = after_warm_up[0], after_warm_up[-1]
    requests = sum(load.statuses.values())
    faults = {f"{n} {s}": c for (n, s), c in load.statuses.items() if is_fault(s)}
    by_endpoint: Counter[str] = Counter()
    for (name, _), count in load.statuses.items():
        by_endpoint[name] += count
    return {
        "seconds": round(seconds, 1),
        "concurrency": settings.concurrency,
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1),
        "server_errors": sum(faults.values()),
        "server_error_kinds": faults,
        "dropped_connections": sum(load.dropped.values()),
        "dropped_kinds": dict(load.dropped),
        "statuses": dict(Counter(s for (_, s) in load.statuses.elements())),
        "by_endpoint": dict(by_endpoint),
        "endpoints_in_mix": len({name for name, _, _ in load.calls}),
        "operations_in_mix": sorted({operation for _, operation, _ in load.calls}),
        "rss_mb_after_warm_up": round(baseline / 2**20, 1),
        "rss_mb_end": round(final / 2**20, 1),
        "rss_mb_peak": round(max(rss for _, rss in samples) / 2**20, 1),
        "rss_growth": round((final - baseline) / baseline, 4),
        "warmup_s": settings.warmup_s,
    }
