"""The compose load balancer without Docker: Debian's nginx runs deploy/nginx/nginx.conf on loopback
(listen ports rewritten to free ones, the `api` upstream to two api processes), and requests must
reach both replicas and keep succeeding when one of them is stopped.

``make test`` installs nginx where it can (``make nginx``); elsewhere these tests are skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from scripts.nginx_local import CONF, find_nginx, nginx_command
from tests.support import free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make nginx, or apt-get install nginx)"
)


@dataclass
class Replica:
    rest_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"


# --- the files --------------------------------------------------------------------------------


def test_compose_publishes_the_ports_on_the_balancer_not_the_replicas() -> None:
    api, lb = COMPOSE["services"]["api"], COMPOSE["services"]["lb"]
    assert "ports" not in api, "a fixed host port would stop `--scale api=2`"
    assert set(api["expose"]) == {"8000", "8001"}
    assert lb["image"].startswith("nginx:")
    assert "8000:8000" in lb["ports"] and "8001:8001" in lb["ports"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    # The upstreams name the api service on the ports its command listens on.
    command = api["command"]
    ports = {command[command.index(flag) + 1] for flag in ("--port", "--grpc-port")}
    assert set(re.findall(r"server api:(\d+)", CONF.read_text())) == ports


# --- running it -------------------------------------------------------------------------------


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Two api processes with the compose service's command, each on its own loopback ports."""
    command = COMPOSE["services"]["api"]["command"]
    env = {**os.environ, "MODEL_REPOSITORY": str(ROOT / "models"), "WORKERS": "1"}
    started: list[Replica] = []
    try:
        for _ in range(2):
            rest, grpc = free_port(), free_port()
            argv = [sys.executable, *command[1:]]
            argv[argv.index("--host") + 1] = "127.0.0.1"
            argv[argv.index("--port") + 1] = str(rest)
            argv[argv.index("--grpc-port") + 1] = str(grpc)
            process = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
            started.append(Replica(rest, grpc, process))
        for r in started:
            wait_ready(f"http://{r.address}/v2/health/ready", r.process, what="api")
        yield started
    finally:
        for r in started:
            stop(r.process)


@pytest.fixture
def balancer(replicas: list[Replica], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """nginx with the compose config on free loopback ports; yields its REST and gRPC addresses."""
    assert NGINX is not None
    rest, grpc = free_port(), free_port()
    argv = nginx_command(
        NGINX,
        listen={8000: rest, 8001: grpc},
        upstreams={8000: [r.rest_port for r in replicas], 8001: [r.grpc_port for r in replicas]},
        tmp=tmp_path,
    )
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{rest}/v2/health/ready", process, what="nginx")
        yield f"127.0.0.1:{rest}", f"127.0.0.1:{grpc}"
    finally:
        stop(process, signal.SIGQUIT, timeout_s=15)  # graceful stop


def _infer(client: httpx.Client, address: str) -> httpx.Response:
    pixels = np.random.default_rng(0).integers(0, 256, 3072).tolist()
    body = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8"}]}
    body["inputs"][0]["data"] = pixels
    return client.post(f"http://{address}/v2/models/cifar10_cnn/infer", json=body, timeout=30)


@needs_nginx
def test_requests_reach_both_replicas_and_survive_one_stopping(
    balancer: tuple[str, str], replicas: list[Replica]
) -> None:
    rest, _ = balancer
    with httpx.Client() as client:
        answered_by: Counter[str] = Counter()
        for _ in range(20):
            response = _infer(client, rest)
            assert response.status_code == 200, response.text
            assert len(response.json()["outputs"]) == 2
            answered_by[response.headers["x-upstream"]] += 1
        assert set(answered_by) == {r.address for r in replicas}, answered_by

        stopped, survivor = replicas
        stopped.process.terminate()
        stopped.process.wait(timeout=30)
        last = []
        for _ in range(20):
            response = _infer(client, rest)
            assert response.status_code == 200, response.text
            last.append(response.headers["x-upstream"].split(", ")[-1])
        assert set(last) == {survivor.address}


@needs_nginx
def test_grpc_goes_through_the_balancer(balancer: tuple[str, str]) -> None:
    _, grpc = balancer
    client = grpcclient.InferenceServerClient(grpc)
    try:
        assert client.is_server_ready()
        images = grpcclient.InferInput("images", [2, 32, 32, 3], "UINT8")
        images.set_data_from_numpy(np.zeros((2, 32, 32, 3), np.uint8))
        result = client.infer("cifar10_cnn", [images])
        probabilities = result.as_numpy("probabilities")
        assert probabilities is not None and probabilities.shape == (2, 10)
    finally:
        client.close()
