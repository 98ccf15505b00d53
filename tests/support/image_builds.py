"""Building the project's images for the container suite: pip's index settings passed as build
secrets (never a layer), the build itself, checks that those secrets stayed out, and the CPU
torch wheel for the trainer (PyTorch's CPU index, or this machine's copy served on loopback)."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.engines import Engine
from tests.support.servers import ROOT

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_INDEX_PORT = 38741  # the local stand-in for PyTorch's CPU index


def pip_config() -> str:
    """``pip config list`` of this machine's pip."""
    argv = [sys.executable, "-m", "pip", "config", "list"]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def pip_settings() -> str:
    """A pip.conf for builds: this machine's http(s) index settings (pip config list), never its
    local find-links or file:// indexes, which do not exist inside a build."""
    lines = ["[global]", "timeout = 180"]
    for key, value in re.findall(r"^[^.]+\.([\w-]+)='(.*)'$", pip_config(), re.MULTILINE):
        if key in ("index-url", "extra-index-url"):
            urls = [u for u in value.split() if u.startswith(("http://", "https://"))]
            if urls:
                lines.append(f"{key} = {' '.join(urls)}")
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = [u for u in os.environ.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            lines.append(f"{key[4:].lower().replace('_', '-')} = {' '.join(urls)}")
    return "\n".join(lines) + "\n"


def write_build_secrets(folder: Path) -> Path:
    """``folder`` holding pip_ca (this machine's CA bundle, where it has one) and pip_conf."""
    folder.mkdir(parents=True, exist_ok=True)
    if CA_BUNDLE.exists():
        (folder / "pip_ca").write_bytes(CA_BUNDLE.read_bytes())
    (folder / "pip_conf").write_text(pip_settings())
    return folder


@dataclass
class Builder:
    """``build --target`` of the project's Dockerfile with the chosen base images and secrets."""

    engine: Engine
    bases: dict[str, str]
    secrets: Path  # folder holding pip_ca and pip_conf for this run

    def build(self, target: str, tag: str, extra: list[str] | None = None) -> float:
        """Seconds the build took; the tag's previous image is removed at the end of the run."""
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


def build_secrets_left(engine: Engine, image: str, secrets: Path) -> list[str]:
    """Where the build's CA bundle and pip.conf reached more than pip: a layer, ENV or history."""
    probe = (
        "import os; bad = [k for k in os.environ if k in "
        "('PIP_CERT', 'PIP_CONFIG_FILE', 'PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL')]; "
        "bad += [p for p in ('/run/secrets/pip_ca', '/run/secrets/pip_conf', '/etc/pip.conf') "
        "if os.path.exists(p) and os.path.getsize(p)]; print(bad)"
    )
    found = engine("run", "--rm", "--entrypoint", "python", image, "-c", probe).stdout.strip()
    left = [] if found == "[]" else [f"in the image: {found}"]
    history = engine("history", "--no-trunc", image).stdout
    conf = (secrets / "pip_conf").read_text() if (secrets / "pip_conf").exists() else ""
    for line in conf.splitlines()[2:]:
        if line.split("=", 1)[-1].strip() in history:
            left.append(f"{line!r} in the image history")
    return left


def torch_pin() -> str:
    """The torch version requirements/trainer.txt pins."""
    lines = (ROOT / "requirements" / "trainer.txt").read_text().splitlines()
    return next(x for x in lines if x.startswith("torch==")).split("==", 1)[1].strip()


def local_wheel(version: str) -> Path | None:
    """This machine's copy of the CPU torch wheel, in pip's find-links folders."""
    folders = [*re.findall(r"find-links='([^']*)'", pip_config())]
    folders.append(os.environ.get("PIP_FIND_LINKS", ""))
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
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/simple"
        finally:
            server.shutdown()
            server.server_close()


@dataclass(frozen=True)
class BuiltImage:
    """An image this run built: its tag and how the build went (seconds, size, where from)."""

    tag: str
    how: str


def torch_index_reachable() -> bool:
    try:
        return httpx.get(f"{TORCH_CPU_INDEX}/torch/", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def build_trainer(builder: Builder, tag: str) -> BuiltImage | str:
    """The trainer image, its CPU torch from PyTorch's CPU index or, where that is unreachable,
    this machine's copy of the pinned wheel served on loopback; a string says why it can't be."""
    version = torch_pin()
    reachable = torch_index_reachable()
    wheel = None if reachable else local_wheel(version)
    if wheel is None and not reachable:
        return f"{TORCH_CPU_INDEX} unreachable and no local torch=={version} wheel"
    context = wheel_index(wheel) if wheel else contextlib.nullcontext(TORCH_CPU_INDEX)
    with context as url:
        seconds = builder.build("trainer", tag, ["--build-arg", f"TORCH_INDEX_URL={url}"])
    where = f"{wheel.name} served on 127.0.0.1" if wheel else "PyTorch's CPU index"
    return BuiltImage(tag, f"from {where}; {seconds:.0f} s, {builder.engine.image_size(tag)}")
