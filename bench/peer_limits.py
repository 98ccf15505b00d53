"""The limits the peers' figures are measured against, on the same cores as the servers: in-process
onnxruntime (no server at all); ``../shared/peers/ceiling_asgi.py``, a raw ASGI app on the same
uvicorn + httptools + uvloop stack with no framework and no batching, with the model (what one
request per run costs) and without it (the HTTP + JSON floor: no Python server on this stack
answers faster); and grpcio's synchronous server answering ModelInfer with nothing but decode,
one run and encode (``bench.grpc_models``' ``sync-direct``), against REST binary of the same
process: the least a call costs through grpcio's Python server here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.bodies import v2_binary, v2_json
from bench.grpc_models import serve_argv
from bench.load import grpc_load, http_load
from bench.onnx_timer import latest_version
from bench.peer_envs import PEERS
from bench.peer_workloads import BN, LECTURE, PROBABILITIES
from bench.placement import Placement, taskset
from bench.results import ROOT
from bench.server import Group, Service, free_port, start

ASGI_APPS = {False: "ceiling (model, no batching)", True: "floor (no model)"}  # NO_MODEL -> name


def ceiling(model: str, batch: int, threads: int, cpus: str | None, seconds: float = 3.0) -> float:
    """onnxruntime alone in a process of its own (on ``cpus`` if given): images/s of ``model``."""
    argv = [
        sys.executable, "-m", "bench.onnx_timer", str(latest_version(model)), "--batch",
        str(batch), "--seconds", str(seconds), "--threads", str(threads),
        *(f"--output={name}" for name in PROBABILITIES),
    ]  # fmt: skip
    argv = taskset(cpus, argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"bench.onnx_timer failed: {done.stderr[-2000:]}")
    return float(json.loads(done.stdout))


def ceiling_rows(place: Placement, threads: int) -> list[dict[str, Any]]:
    """The in-process figures of one placement: with ``threads`` on the server's cores, and
    ``cifar10_cnn_bn`` with 2 threads on any core (what the issue's bn target names) too."""
    picks = [(LECTURE, 1, threads), (LECTURE, 32, threads), (BN, 32, threads)]
    rows = [
        {"model": m, "batch": b, "threads": t, "cpus": place.server_cpus or "any",
         "images_per_s": ceiling(m, b, t, place.server_cpus)}
        for m, b, t in picks
    ]  # fmt: skip
    if place.pinned or threads != 2:
        rows.append({"model": BN, "batch": 32, "threads": 2, "cpus": "any",
                     "images_per_s": ceiling(BN, 32, 2, None)})  # fmt: skip
    return rows


def start_ceiling(
    place: Placement, no_model: bool, log: Path, batched: bool = False
) -> tuple[Group, int]:
    """``ceiling_asgi.py`` on the server's cores of ``place`` with the lecture model's latest
    graph (``no_model``: the HTTP + JSON floor; ``batched``: ``bench/ceiling_batched.py``, the
    same with dynamic batching), ready; its group and port."""
    port = free_port()
    env = {"MODEL_ONNX": str(latest_version(LECTURE)), "NO_MODEL": "1" if no_model else "0"}
    where, app = (ROOT / "bench", "ceiling_batched:app") if batched else (PEERS, "ceiling_asgi:app")
    argv = place.server([
        sys.executable, "-m", "uvicorn", "--app-dir", str(where), "--http", "httptools",
        "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--host",
        "127.0.0.1", "--port", str(port), app,
    ])  # fmt: skip
    return start(argv, env, port, log, 60), port


def asgi_rows(seconds: float, tmp: Path, place: Placement) -> list[dict[str, Any]]:
    """The raw ASGI app with and without the model, on the server's cores, 1 and 64 clients
    sending the lecture model's 1-image FP32 JSON body."""
    body = v2_json(1, "FP32", PROBABILITIES)
    rows = []
    for no_model, app in ASGI_APPS.items():
        group, port = start_ceiling(place, no_model, tmp / "asgi.log")
        try:
            for clients in (1, 64):
                row = http_load(
                    f"127.0.0.1:{port}", f"/v2/models/{LECTURE}/infer", body, clients=clients,
                    seconds=seconds, cpus=place.client_cpus,
                )  # fmt: skip
                rows.append({"app": app, "no_model": no_model, "clients": clients, **row})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            group.stop()
    return rows


def grpc_limit(seconds: float, tmp: Path, place: Placement) -> dict[str, Any]:
    """One client's p50 through grpcio's synchronous server with nothing but decode, one run and
    encode on its pool thread (no loop, batcher, leases, statistics or metrics), with both gRPC
    clients, against REST binary of the same process, on the server's cores: 1 image, UINT8."""
    where = Service(free_port(), free_port())
    argv = place.server(serve_argv("sync-direct", where))
    env = {"INTRA_OP_THREADS": "1"} if place.pinned else {}
    group = start(argv, env, where.port, tmp / "grpc-limit.log", 60)
    try:
        limit = protocol_p50s(where, seconds, place.client_cpus)
    finally:
        group.stop()
    print(json.dumps({"grpc_limit": limit}), flush=True)
    return limit


def protocol_p50s(where: Service, seconds: float, cpus: str | None) -> dict[str, Any]:
    """One client's p50 of the lecture model, 1 image UINT8, by REST binary and by gRPC with
    either client, and each gRPC p50's ratio to REST binary's."""
    body, headers = v2_binary(1)
    rest = http_load(
        where.address, f"/v2/models/{LECTURE}/infer", body, clients=1, seconds=seconds,
        content_type="application/octet-stream", headers=headers, cpus=cpus,
    )  # fmt: skip
    grpc, blocking = (
        grpc_load(where.grpc_address, LECTURE, images=1, clients=1, seconds=seconds,
                  blocking=b, cpus=cpus)
        for b in (False, True)
    )  # fmt: skip
    return {
        "rest_binary_p50_ms": rest["p50_ms"],
        "grpc_p50_ms": grpc["p50_ms"],
        "grpc_ratio": grpc["p50_ms"] / rest["p50_ms"],
        "blocking_p50_ms": blocking["p50_ms"],
        "blocking_ratio": blocking["p50_ms"] / rest["p50_ms"],
    }
