"""Classifying real CIFAR-10 images as a user would, against any address: over REST (v2 JSON) and
gRPC (tritonclient), and through a local ``python -m service`` whose answers the images must
match. Used by the container suite (``tests/system``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.support.servers import ROOT, free_port, stop, wait_ready

DATA = ROOT / "data" / "cifar10-jpeg"  # make data


def real_images(count: int) -> tuple[np.ndarray, list[str]]:
    """``count`` CIFAR-10 test JPEGs, one class after another, as uint8 (N, 32, 32, 3), and
    their labels."""
    by_class: dict[str, list[Path]] = {}
    for f in sorted(DATA.glob("test/*/*.jpg")):
        by_class.setdefault(f.parent.name, []).append(f)
    picked = [
        by_class[c][i] for i in range(count) for c in sorted(by_class) if i < len(by_class[c])
    ][:count]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in picked])
    return images, [f.parent.name for f in picked]


def infer_rest(address: str, model: str, images: np.ndarray) -> np.ndarray:
    """The probabilities v2 REST infer at ``address`` (host:port) gives for ``images``."""
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8"}
    body = {
        "inputs": [{**tensor, "data": images.reshape(-1).tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    response = httpx.post(f"http://{address}/v2/models/{model}/infer", json=body, timeout=60)
    assert response.status_code == 200, (
        f"{model} REST infer: {response.status_code} {response.text}"
    )
    output = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def infer_grpc(address: str, model: str, images: np.ndarray) -> np.ndarray:
    """The probabilities gRPC ModelInfer at ``address`` gives for ``images``."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    try:
        tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        wanted = [grpcclient.InferRequestedOutput("probabilities")]
        result = client.infer(model, [tensor], outputs=wanted, client_timeout=60)
        probabilities = result.as_numpy("probabilities")
        assert probabilities is not None, f"{model}: no probabilities over gRPC"
        return np.asarray(probabilities)
    finally:
        client.close()


def wait_http(url: str, timeout_s: float = 90, status: int = 200) -> None:
    """Block until GET ``url`` answers ``status``; after ``timeout_s`` fail with the last answer."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=3)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered {status} (last: {last})")


@contextlib.contextmanager
def local_server(models: Path) -> Iterator[dict[str, str]]:
    """`make serve`'s command on free loopback ports: the answers the images must match."""
    rest, grpc = free_port(), free_port()
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(rest)]
    argv += ["--grpc-port", str(grpc), "--model-repository", str(models), "--workers", "1"]
    env = {**os.environ, "PROVIDERS": "CPUExecutionProvider", "POLL_INTERVAL_S": "0"}
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{rest}/v2/health/ready", process)
        yield {"rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc}"}
    finally:
        stop(process)
