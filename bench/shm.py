"""What system shared memory gains a client on the same machine, against the binary extension:
256-image UINT8 batches from tritonclient (HTTP and gRPC), one request at a time.

    python -m bench shm [--images 256] [--seconds 2.5] [--rounds 3] [--no-write]

Each request's full round trip is timed, the client's own copies included: with the binary
extension it serialises the batch and parses the answer; with shared memory it writes the batch
into its input region and reads the probabilities out of its output region
(``tritonclient.utils.shared_memory``). The four ways take turns, ``--rounds`` times, on one
server (``python -m service``, ADMIN_LOOPBACK so the client may register), so the machine's noise
falls on all of them alike. Writes ``docs/results/shm.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm

from bench.publish import publish
from bench.results import ROOT
from bench.server import running_service

MODEL = "cifar10_cnn"
OUTPUT = "probabilities"
WAYS = ("HTTP binary", "HTTP shared memory", "gRPC raw", "gRPC shared memory")


@contextmanager
def regions(client: Any, pixels: np.ndarray) -> Iterator[tuple[Any, Any]]:
    """An input and an output region sized for ``pixels``, registered with ``client``."""
    tag = uuid.uuid4().hex[:8]
    size_in, size_out = pixels.nbytes, len(pixels) * 10 * 4
    inputs = shm.create_shared_memory_region(f"in{tag}", f"/bench_in{tag}", size_in)
    outputs = shm.create_shared_memory_region(f"out{tag}", f"/bench_out{tag}", size_out)
    try:
        client.register_system_shared_memory(f"in{tag}", f"/bench_in{tag}", size_in)
        client.register_system_shared_memory(f"out{tag}", f"/bench_out{tag}", size_out)
        yield inputs, outputs
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


def binary_call(module: Any, client: Any, pixels: np.ndarray) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        tensor = module.InferInput("images", list(pixels.shape), "UINT8")
        if module is triton_http:
            tensor.set_data_from_numpy(pixels, binary_data=True)
            wanted = [module.InferRequestedOutput(OUTPUT, binary_data=True)]
        else:
            tensor.set_data_from_numpy(pixels)
            wanted = [module.InferRequestedOutput(OUTPUT)]
        answer: np.ndarray = client.infer(MODEL, [tensor], outputs=wanted).as_numpy(OUTPUT)
        return answer

    return call


def shm_call(
    module: Any, client: Any, pixels: np.ndarray, inputs: Any, outputs: Any
) -> Callable[[], np.ndarray]:
    names = (inputs._triton_shm_name, outputs._triton_shm_name)
    shape = [len(pixels), 10]

    def call() -> np.ndarray:
        shm.set_shared_memory_region(inputs, [pixels])
        tensor = module.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_shared_memory(names[0], pixels.nbytes)
        wanted = module.InferRequestedOutput(OUTPUT)
        wanted.set_shared_memory(names[1], len(pixels) * 40)
        client.infer(MODEL, [tensor], outputs=[wanted])
        answer: np.ndarray = shm.get_contents_as_numpy(outputs, np.float32, shape).copy()
        return answer

    return call


def timed(call: Callable[[], np.ndarray], seconds: float) -> list[float]:
    """Latencies in ms of back-to-back calls for ``seconds`` (after one untimed call)."""
    call()
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def measure(args: argparse.Namespace, address: str, grpc_address: str) -> dict[str, Any]:
    pixels = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    http = triton_http.InferenceServerClient(address, network_timeout=120)
    grpc = triton_grpc.InferenceServerClient(grpc_address)
    latencies: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        with regions(http, pixels) as (h_in, h_out), regions(grpc, pixels) as (g_in, g_out):
            calls = {
                "HTTP binary": binary_call(triton_http, http, pixels),
                "HTTP shared memory": shm_call(triton_http, http, pixels, h_in, h_out),
                "gRPC raw": binary_call(triton_grpc, grpc, pixels),
                "gRPC shared memory": shm_call(triton_grpc, grpc, pixels, g_in, g_out),
            }
            reference = calls["HTTP binary"]()
            for way, call in calls.items():  # every way answers the same
                np.testing.assert_allclose(call(), reference, atol=1e-6, err_msg=way)
            for _ in range(args.rounds):
                for way, call in calls.items():
                    latencies[way] += timed(call, args.seconds)
    finally:
        http.close()
        grpc.close()
    return {way: _row(values, args.images) for way, values in latencies.items()}


def _row(latencies: list[float], images: int) -> dict[str, Any]:
    mean_ms = statistics.fmean(latencies)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "mean_ms": round(mean_ms, 2),
        "images_per_s": round(images * 1000 / mean_ms),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=256, help="images per request")
    parser.add_argument("--seconds", type=float, default=2.5, help="per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
        env = {"LOG_LEVEL": "warning", "WORKERS": "1", "ADMIN_LOOPBACK": "true",
               "MODEL_REPOSITORY": str(repo)}  # fmt: skip
        with running_service(env, Path(tmp) / "server.log") as server:
            ways = measure(args, server.address, server.grpc_address)
    speedup = {
        "HTTP": ways["HTTP shared memory"]["images_per_s"] / ways["HTTP binary"]["images_per_s"],
        "gRPC": ways["gRPC shared memory"]["images_per_s"] / ways["gRPC raw"]["images_per_s"],
    }
    results = {
        "images": args.images,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "model": MODEL,
        "ways": ways,
        "speedup": {k: round(v, 3) for k, v in speedup.items()},
    }
    publish("shm", results, args.no_write)
