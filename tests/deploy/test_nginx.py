"""The compose load balancer without Docker: Debian's nginx runs deploy/nginx/nginx.conf on loopback
(listen ports rewritten to free ones, the `api` upstream to two api processes), and requests must
reach both replicas and keep succeeding when one of them is stopped. nginx connects to the api
from 127.0.0.1, so the repository API must not take its clients for local ones (REST or gRPC).

``make test`` installs nginx where it can (``make nginx``); elsewhere these tests are skipped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from bench.nginx import CONF, find_nginx, nginx_command
from tests.support.servers import free_port, stop, wait_ready, wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
NGINX = find_nginx()
TOKEN = "nginx-test-token"
ELSEWHERE = "127.0.0.2"  # a client address other than nginx's own 127.0.0.1
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make nginx, or apt-get install nginx)"
)


@dataclass
class Replica:
    rest_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    log: Path

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
    # The client's address travels to the api for gRPC as for REST.
    for kind in ("proxy", "grpc"):
        assert f"{kind}_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
        assert f"{kind}_set_header X-Real-IP $remote_addr;" in conf
    assert "server_tokens off;" in conf
    assert not re.search(r"listen [^;]*http2", conf) and "http2 on;" in conf
    lb = COMPOSE["services"]["lb"]
    assert "depends_on" not in lb or "service_healthy" not in str(lb["depends_on"])
    major, minor = (int(x) for x in re.findall(r"nginx:(\d+)\.(\d+)", lb["image"])[0])
    assert (major, minor) >= (1, 28) and minor % 2 == 0, "a current stable nginx line"


# --- running it -------------------------------------------------------------------------------


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    """Two api processes with the image's command, each on its own loopback ports, trusting
    nginx's address as a proxy; with the admin token and ADMIN_LOOPBACK (local development on
    the host: an api beside nginx is the case where a tokenless loopback rule was open to all)."""
    command = ["python", "-m", "service", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"]
    env = {
        **os.environ,
        "MODEL_REPOSITORY": str(ROOT / "models"),
        "WORKERS": "1",
        "ADMIN_TOKEN": TOKEN,
        "ADMIN_LOOPBACK": "true",
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "info",
    }
    env.pop("ADMIN_TOKEN_FILE", None)
    started: list[Replica] = []
    try:
        for i in range(2):
            rest, grpc = free_port(), free_port()
            argv = [sys.executable, *command[1:]]
            argv[argv.index("--host") + 1] = "127.0.0.1"
            argv[argv.index("--port") + 1] = str(rest)
            argv[argv.index("--grpc-port") + 1] = str(grpc)
            log = tmp_path / f"replica-{i}.log"
            with log.open("wb") as stderr:
                process = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=stderr)
            started.append(Replica(rest, grpc, process, log))
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


class Relay:
    """A TCP relay listening on 127.0.0.1 that connects on to ``target`` from ``source``, so that
    nginx sees a client at another address (grpc has no option to bind a client's address)."""

    def __init__(self, target: str, source: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target, self.source = (host, int(port)), source
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:  # closed
                return
            outbound = socket.create_connection(self.target, source_address=(self.source, 0))
            self.sockets += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in self.sockets:
            s.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _grpc_status(call: Any) -> str:
    with pytest.raises(InferenceServerException) as failure:
        call()
    return str(failure.value.status()).removeprefix("StatusCode.")


@needs_nginx
def test_repository_api_through_the_balancer_takes_the_token_not_the_address(
    balancer: tuple[str, str], replicas: list[Replica]
) -> None:
    """Under ADMIN_LOOPBACK a replica admits its direct local clients, but nothing that came
    through nginx, which forwards the client's address (even one claiming to be 127.0.0.1) for
    gRPC as for REST; with the token, calls through nginx work."""
    rest, grpc = balancer
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{replicas[0].grpc_port}")
    try:
        assert direct.get_model_repository_index().models  # the rule that is not for proxies
    finally:
        direct.close()
    relay = Relay(grpc, source=ELSEWHERE)
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        for address, metadata in (
            (grpc, {}),  # this host, 127.0.0.1, as nginx itself is
            (relay.address, {}),  # another address
            (relay.address, {"x-forwarded-for": "127.0.0.1"}),  # one that claims to be local
        ):
            client = grpcclient.InferenceServerClient(address)
            try:
                for call in (
                    partial(client.get_model_repository_index, headers=metadata),
                    partial(client.unload_model, "cifar10_cnn", headers=metadata),
                    partial(client.load_model, "cifar10_cnn", headers=metadata),
                ):
                    assert _grpc_status(call) in ("UNAUTHENTICATED", "PERMISSION_DENIED")
                assert client.get_model_repository_index(headers=auth).models
                client.load_model("cifar10_cnn", headers=auth)
            finally:
                client.close()
    finally:
        relay.close()
    for replica in replicas:  # the refused unloads changed nothing
        ready = httpx.get(f"http://{replica.address}/v2/models/cifar10_cnn/ready", timeout=10)
        assert ready.status_code == 200
    # The replicas saw the relayed client's address through nginx, not the address nginx used.
    logs = lambda: "".join(r.log.read_text() for r in replicas)  # noqa: E731
    refused = f"gRPC RepositoryIndex refused for client '{ELSEWHERE}'"
    wait_until(lambda: logs().count(refused) >= 2, 10, "the replicas' refusal lines")

    transport = httpx.HTTPTransport(local_address=ELSEWHERE)
    with httpx.Client(transport=transport, timeout=30) as http:
        url = f"http://{rest}/v2/repository/index"
        assert http.post(url).status_code == 401
        assert http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.post(url, timeout=30).status_code == 401  # from 127.0.0.1 too
    assert f"POST /v2/repository/index refused for client '{ELSEWHERE}'" in logs()
