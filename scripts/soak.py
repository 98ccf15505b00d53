"""Soak test: a real server under mixed load for a bounded time, watching for 5xx, dropped
connections and memory growth.

    python scripts/soak.py --seconds 180 --concurrency 64            (or: make soak)

Starts ``python -m service`` (REST and gRPC) on free loopback ports, then runs ``--concurrency``
closed-loop clients that cycle through every endpoint: v2 infer (JSON, binary tensors, gRPC),
v1 :predict and :classify (PNG files), health, metadata, the repository index, layers, metrics.
The server's resident memory is sampled each second; growth is measured from the end of the
warm-up to the end of the run. Prints one JSON line and exits non-zero on any 5xx (or gRPC
INTERNAL/UNAVAILABLE/UNKNOWN), any dropped connection, or growth over ``--max-rss-growth``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, the project root is not on the path

from bench.server import free_port, wait_ready  # noqa: E402

JSON = {"content-type": "application/json"}
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN}


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Load:
    """The request mix and what came back, per endpoint."""

    def __init__(self, http: httpx.AsyncClient, stub: Any, model: str) -> None:
        self.http, self.stub, self.model = http, stub, model
        rng = np.random.default_rng(0)
        one = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
        four = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8"}
        self.v2_json = json.dumps({"inputs": [{**tensor, "data": one.ravel().tolist()}]})
        header = json.dumps(
            {
                "inputs": [
                    {
                        **tensor,
                        "shape": [4, 32, 32, 3],
                        "parameters": {"binary_data_size": four.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        self.v2_binary = header + four.tobytes()
        self.v2_binary_length = str(len(header))
        self.image = png(1)
        self.predict = json.dumps(
            {"instances": [{"b64": base64.b64encode(png(2)).decode()}, one[0].tolist()]}
        )
        self.grpc_request = service_pb2.ModelInferRequest(
            model_name=model,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="images", datatype="UINT8", shape=[1, 32, 32, 3]
                )
            ],
            raw_input_contents=[one.tobytes()],
        )
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.dropped: Counter[str] = Counter()
        self.calls: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("v2 infer json", self._v2_json),
            ("v2 infer binary", self._v2_binary),
            ("grpc infer", self._grpc),
            ("v1 predict", self._predict),
            ("v1 classify", self._classify),
            ("v2 infer json", self._v2_json),
            ("health", lambda: self._get("/v2/health/ready")),
            ("metadata", lambda: self._get(f"/v2/models/{self.model}")),
            ("v1 models", lambda: self._get("/v1/models")),
            ("layers", lambda: self._get(f"/v1/models/{self.model}/layers")),
            ("metrics", lambda: self._get("/metrics")),
            ("repository index", self._index),
        ]

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
        return self._status(self.http.post(url, content=self.v2_json, headers=JSON))

    def _v2_binary(self) -> Awaitable[str]:
        headers = {"Inference-Header-Content-Length": self.v2_binary_length}
        return self._status(
            self.http.post(
                f"/v2/models/{self.model}/infer", content=self.v2_binary, headers=headers
            )
        )

    def _predict(self) -> Awaitable[str]:
        url = f"/v1/models/{self.model}:predict"
        return self._status(self.http.post(url, content=self.predict, headers=JSON))

    def _classify(self) -> Awaitable[str]:
        files = {"file": ("image.png", self.image, "image/png")}
        return self._status(self.http.post(f"/v1/models/{self.model}:classify", files=files))

    async def _grpc(self) -> str:
        try:
            await self.stub.ModelInfer(self.grpc_request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return f"grpc {exc.code().name}"
        return "grpc OK"

    async def worker(self, index: int, stop_at: float) -> None:
        step = index
        while time.monotonic() < stop_at:
            name, call = self.calls[step % len(self.calls)]
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


async def soak(
    args: argparse.Namespace, rest_port: int, grpc_port: int, pid: int
) -> dict[str, Any]:
    process = psutil.Process(pid)
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{rest_port}", timeout=60, limits=limits
        ) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        load = Load(http, service_pb2_grpc.GRPCInferenceServiceStub(channel), args.model)
        started = time.monotonic()
        stop_at = started + args.seconds
        workers = [asyncio.create_task(load.worker(i, stop_at)) for i in range(args.concurrency)]
        samples: list[tuple[float, int]] = []
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - started, process.memory_info().rss))
            await asyncio.sleep(1.0)
        await asyncio.gather(*workers)
        samples.append((time.monotonic() - started, process.memory_info().rss))
        seconds = time.monotonic() - started
    after_warm_up = [rss for t, rss in samples if t >= args.warmup_s] or [samples[-1][1]]
    baseline, final = after_warm_up[0], after_warm_up[-1]
    requests = sum(load.statuses.values())
    faults = {f"{n} {s}": c for (n, s), c in load.statuses.items() if is_fault(s)}
    by_endpoint: Counter[str] = Counter()
    for (name, _), count in load.statuses.items():
        by_endpoint[name] += count
    return {
        "seconds": round(seconds, 1),
        "concurrency": args.concurrency,
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1),
        "server_errors": sum(faults.values()),
        "server_error_kinds": faults,
        "dropped_connections": sum(load.dropped.values()),
        "dropped_kinds": dict(load.dropped),
        "statuses": dict(Counter(s for (_, s) in load.statuses.elements())),
        "by_endpoint": dict(by_endpoint),
        "endpoints_in_mix": len({name for name, _ in load.calls}),
        "rss_mb_after_warm_up": round(baseline / 2**20, 1),
        "rss_mb_end": round(final / 2**20, 1),
        "rss_mb_peak": round(max(rss for _, rss in samples) / 2**20, 1),
        "rss_growth": round((final - baseline) / baseline, 4),
        "warmup_s": args.warmup_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="cifar10_cnn")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="memory baseline from here")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    args = parser.parse_args(argv)

    rest_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PROVIDERS": "CPUExecutionProvider"}
    env["ADMIN_LOOPBACK"] = "true"  # the index is read straight from 127.0.0.1, no token
    command = [
        sys.executable,
        "-m",
        "service",
        "--port",
        str(rest_port),
        "--grpc-port",
        str(grpc_port),
        "--model-repository",
        str(args.model_repository),
        "--log-level",
        "warning",
    ]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{rest_port}", server)
            result = asyncio.run(soak(args, rest_port, grpc_port, server.pid))
        finally:
            server.terminate()
            result_exit = server.wait(timeout=60)
        log.seek(0)
        server_log = log.read().decode(errors="replace")
    result["server_exit"] = result_exit
    result["server_tracebacks"] = server_log.count("Traceback")
    print(json.dumps(result))
    failed = (
        result["server_errors"]
        or result["dropped_connections"]
        or result["server_tracebacks"]
        or result["rss_growth"] > args.max_rss_growth
        or result_exit != 0
    )
    if failed:
        print(server_log[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
