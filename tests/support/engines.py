"""The container engine the container suite drives (docker, else podman): one class that runs the
engine's CLI and removes what this run created, and the base images (Docker Hub's where present,
else Debian stand-ins made once with mmdebstrap or debootstrap and cached in the engine's store)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import ROOT

CACHE = ROOT / ".cache" / "image-check"
LABEL = "org.cifar-serve.image-check"  # on every container this check starts
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What podman 4.3 needs on this machine kind (issue 15): runc, cgroupfs, file events, ulimits.
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@dataclass
class Engine:
    """docker or podman with the environment it needs, and what this run created with it."""

    name: str  # docker or podman
    env: dict[str, str]
    run_id: str
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)  # compose projects this run started
    replaced: list[str] = field(default_factory=list)  # image ids a rebuild left untagged
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args], env=self.env, check=check, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def image_exists(self, image: str) -> bool:
        return self("image", "inspect", image, check=False).returncode == 0

    def start(self, *args: str) -> str:
        """``run -d`` with this run's label; the container is removed at the end."""
        name = f"image-check-{self.run_id}-{len(self.containers)}"
        self.containers.append(name)
        self("run", "-d", "--name", name, "--label", f"{LABEL}={self.run_id}", *args)
        return name

    def published(self, container: str, port: int) -> str:
        """The 127.0.0.1:<port> the engine gave a container port."""
        out = self("port", container, f"{port}/tcp").stdout.split()
        return next(a for a in out if a.startswith("127.0.0.1:"))

    def logs(self, container: str) -> str:
        result = self("logs", container, check=False)
        return result.stdout + result.stderr

    def remove(self, *containers: str) -> None:
        for container in containers:
            self("rm", "--force", container, check=False, timeout=60)

    def labelled(self, label: str) -> list[str]:
        return self("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()

    def clean(self) -> None:
        """Remove every container, network and replaced image this run made (also on failure)."""
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.cleanups.clear()
        self.remove(*self.containers)
        # Anything else labelled by this run (compose-started containers carry their own).
        self.remove(*self.labelled(f"{LABEL}={self.run_id}"))
        for project in self.projects:  # whatever compose left, even without its API socket
            self.remove(*self.labelled(f"com.docker.compose.project={project}"))
            self.networks.append(f"{project}_default")
        for network in self.networks:
            if self("network", "inspect", network, check=False).returncode == 0:
                self("network", "rm", network, check=False, timeout=60)
        for image in self.replaced:  # the previous build of a tag, now untagged (not if in use)
            self("rmi", image, check=False, timeout=120)
        for found in (self.containers, self.networks, self.projects, self.replaced):
            found.clear()

    def healthcheck_command(self, image_or_container: str) -> list[str]:
        """The HEALTHCHECK test as an argv to exec in the container (CMD-SHELL -> sh -c)."""
        (found,) = json.loads(self("inspect", image_or_container).stdout)
        # docker: Config.Healthcheck for images and containers; podman: Healthcheck for images.
        healthcheck = found.get("Healthcheck") or found.get("Config", {}).get("Healthcheck") or {}
        test: list[str] = healthcheck.get("Test") or []
        assert test, f"{image_or_container} has no HEALTHCHECK"
        kind, *rest = test
        return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest

    def image_size(self, image: str) -> str:
        size = int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        return f"{size / 1e6:.0f} MB"


def find_engine(run_id: str) -> Engine | None:
    """docker where its daemon answers, else podman (with this machine's settings), else None."""
    for name in ("docker", "podman"):
        if shutil.which(name) is None:
            continue
        env = dict(os.environ)
        if name == "podman":
            CACHE.mkdir(parents=True, exist_ok=True)
            conf = CACHE / "containers.conf"
            conf.write_text(PODMAN_CONF)
            env["CONTAINERS_CONF"] = str(conf)
        if subprocess.run([name, "info"], env=env, capture_output=True, timeout=120).returncode:
            continue  # installed, but no engine answers (e.g. the docker CLI without a daemon)
        return Engine(name, env, run_id)
    return None


# --- base images ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StandIn:
    """A Debian root filesystem standing in for a Docker Hub base image."""

    image: str
    suite: str
    packages: str
    hooks: tuple[str, ...]  # shell run with the root filesystem as $1


BASES = {  # build argument: (Docker Hub's image, the stand-in made where it is absent)
    "PYTHON_IMAGE": (
        "python:3.11-slim",
        # Laid out like the official image: a venv at /usr/local, so `python` and `pip` are
        # /usr/local/bin's and packages go to /usr/local/lib/python3.11.
        StandIn(
            "localhost/cifar-serve-standin-python:3.11-bookworm", "bookworm",
            "python3.11,python3-venv,ca-certificates",
            ('chroot "$1" python3 -m venv /usr/local',
             'rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'),
        ),
    ),
    "NGINX_IMAGE": (
        "nginx:1.28-alpine",
        # trixie's nginx is 1.26 (`http2 on` needs 1.25.1); wget for the healthcheck.
        StandIn(
            "localhost/cifar-serve-standin-nginx:1.26-trixie", "trixie", "nginx,wget,mawk",
            ('rm -f "$1"/etc/nginx/sites-enabled/*',
             'rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'),
        ),
    ),
}  # fmt: skip


def root_filesystem(standin: StandIn, tar: Path) -> None:
    """``standin`` as a tar of a minimal Debian made with mmdebstrap, else debootstrap."""
    if shutil.which("mmdebstrap"):
        argv = ["mmdebstrap", "--variant=minbase", f"--include={standin.packages}"]
        argv += [f"--customize-hook={hook}" for hook in standin.hooks]
        argv += [standin.suite, str(tar), DEBIAN_MIRROR]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=1200)
        return
    assert shutil.which("debootstrap"), "neither mmdebstrap nor debootstrap is installed"
    rootfs = tar.parent / "rootfs"
    argv = ["debootstrap", "--variant=minbase", f"--include={standin.packages}", standin.suite]
    subprocess.run([*argv, str(rootfs), DEBIAN_MIRROR], check=True, capture_output=True)
    for hook in standin.hooks:
        subprocess.run(["sh", "-c", hook, "hook", str(rootfs)], check=True)
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)


def make_standin(engine: Engine, standin: StandIn) -> str:
    """``standin.image`` in the engine's store (made once, then cached); says which."""
    if engine.image_exists(standin.image):
        return f"cached {standin.image}"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        root_filesystem(standin, tar)
        engine("import", "--change", "ENV LANG=C.UTF-8", str(tar), standin.image, timeout=600)
    return f"made {standin.image} from Debian {standin.suite} in {time.monotonic() - start:.0f} s"


def base_image(engine: Engine, key: str, pull: bool) -> tuple[str, str]:
    """The image for build argument ``key`` and how it was had: Docker Hub's where present (or
    pullable with ``pull``), else the stand-in."""
    hub, standin = BASES[key]
    if engine.image_exists(hub) or (
        pull and engine("pull", hub, check=False, timeout=300).returncode == 0
    ):
        return hub, f"{hub} (Docker Hub)"
    return standin.image, f"{hub} not available here: {make_standin(engine, standin)}"
