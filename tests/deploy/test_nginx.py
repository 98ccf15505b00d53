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
    assert re.fullmatch(r"\$\{NGINX_IMAGE:-nginx:[\w.-]+\}", lb["image"])
    assert "8000:8000" in lb["ports"] and "8001:8001" in lb["ports"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert "./deploy/nginx/start.sh:/etc/nginx/start.sh:ro" in lb["volumes"]
    # The balancer names the api service on the ports the image listens on (HOST/PORT settings).
    env = _image_env()
    assert set(re.findall(r"default api:(\d+);", CONF.read_text())) == {
        env["PORT"],
        env["GRPC_PORT"],
    }


def _image_env() -> dict[str, str]:
    """The api stage's ENV settings from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    api = text[text.index("AS api\n") : text.index("AS api-gpu")]
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", api, re.M)))
    return dict(pairs)


def test_balancer_resolves_the_replicas_while_serving_and_names_none() -> None:
    """Replicas that are recreated get new addresses: nginx must look `api` up again (a variable
    in proxy_pass with a short-lived resolver answer), start while api is down, and send no header
    with an internal address; gRPC listens with the current `http2 on` syntax."""
    conf = CONF.read_text()
    assert "proxy_pass http://$api_http;" in conf and "grpc_pass grpc://$api_grpc;" in conf
    assert re.search(r"include /etc/nginx/resolver\.conf;", conf)
    start = (ROOT / "deploy" / "nginx" / "start.sh").read_text()
    assert "valid=2s" in start and "/etc/resolv.conf" in start
    assert "upstream_addr" not in conf and "add_header" not in conf
    assert "server_tokens off;" in conf
    assert not re.search(r"listen [^;]*http2", conf) and "http2 on;" in conf
    lb = COMPOSE["services"]["lb"]
    assert "depends_on" not in lb or "service_healthy" not in str(lb["depends_on"])
    major, minor = (int(x) for x in re.findall(r"nginx:(\d+)\.(\d+)", lb["image"])[0])
    assert (major, minor) >= (1, 28) and minor % 2 == 0, "a current stable nginx line"


# --- running it -------------------------------------------------------------------------------


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Two api processes with the image's command, each on its own loopback ports."""
    command = ["python", "-m", "service", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"]
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


def _images_served(replica: Replica) -> float:
    """Images this replica classified, from its own /metrics (the balancer names no replica)."""
    text = httpx.get(f"http://{replica.address}/metrics", timeout=10).text
    return sum(
        float(v) for v in re.findall(r"^images_classified_total\{[^}]*\} (\S+)$", text, re.M)
    )


@needs_nginx
def test_requests_reach_both_replicas_and_survive_one_stopping(
    balancer: tuple[str, str], replicas: list[Replica]
) -> None:
    rest, _ = balancer
    with httpx.Client() as client:
        for _ in range(20):
            response = _infer(client, rest)
            assert response.status_code == 200, response.text
            assert len(response.json()["outputs"]) == 2
            assert not {"x-upstream", "x-upstream-addr"} & set(response.headers)
            assert "127.0.0.1:" not in str(response.headers)  # no internal address leaks
        served = [_images_served(r) for r in replicas]
        assert all(n > 0 for n in served) and sum(served) == 20, served

        stopped, survivor = replicas
        stopped.process.terminate()
        stopped.process.wait(timeout=30)
        before = _images_served(survivor)
        for _ in range(20):
            response = _infer(client, rest)
            assert response.status_code == 200, response.text
        assert _images_served(survivor) - before == 20


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
