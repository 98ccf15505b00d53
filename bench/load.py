"""The one load-generator runner: ``bench.loadgen`` (HTTP/1.1) or ``bench.loadgen_grpc`` in a
process of its own, so the client's work does not share the benchmark's interpreter; returns the
JSON summary it prints (requests/s, images/s, p50/p90/p99 ms, errors)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.placement import taskset
from bench.results import ROOT


def http_load(
    address: str,
    path: str,
    body: bytes,
    *,
    clients: int,
    seconds: float,
    content_type: str = "application/json",
    headers: tuple[str, ...] = (),
    images: int = 1,
    cpus: str | None = None,
) -> dict[str, Any]:
    """``clients`` keep-alive connections POSTing ``body`` to ``address`` + ``path``, after 1 s
    of warm-up; ``cpus``: the load generator pinned there (taskset's list), else anywhere."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(body)
        cmd = [
            "bench.loadgen", "--address", address, "--path", path, "--body-file", str(body_file),
            "--content-type", content_type, "--concurrency", str(clients),
            "--seconds", str(seconds), "--warmup", "1", "--images", str(images),
        ]  # fmt: skip
        for header in headers:
            cmd += ["--header", header]
        return run_module(cmd, seconds, cpus)


def grpc_load(
    address: str,
    model: str,
    *,
    images: int,
    clients: int,
    seconds: float,
    blocking: bool = False,
    cpus: str | None = None,
) -> dict[str, Any]:
    """``clients`` callers of ModelInfer (raw UINT8) on one channel; ``blocking``: grpcio's
    blocking client, one caller."""
    cmd = [
        "bench.loadgen_grpc", "--address", address, "--model", model, "--images", str(images),
        "--concurrency", str(clients), "--seconds", str(seconds), "--warmup", "1",
        *(["--blocking"] if blocking else []),
    ]  # fmt: skip
    return run_module(cmd, seconds, cpus)


def run_module(module_args: list[str], seconds: float, cpus: str | None = None) -> dict[str, Any]:
    """Run ``python -m <module_args>`` (on ``cpus`` if given): its JSON summary from stdout, or
    exit naming its error."""
    result = subprocess.run(
        taskset(cpus, [sys.executable, "-m", *module_args]),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=ROOT,
    )
    if result.returncode:
        raise SystemExit(f"{module_args[0]} failed: {result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out
