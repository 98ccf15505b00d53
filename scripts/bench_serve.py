"""Serving benchmark: the real server, a load generator in another process, in-process ceiling.

    make bench            # or: python scripts/bench_serve.py [--seconds 5] [--quick] [--grpc]

Starts ``python -m service`` on a free loopback port (batching on, then off), drives it with
``scripts/loadgen.py`` for each scenario, measures the same model run in process by onnxruntime
at the same batch sizes (the ceiling); with ``--grpc`` also the gRPC service, driven by
``scripts/loadgen_grpc.py`` (raw UINT8 tensors). It writes the table to ``docs/benchmarks.md``
(the serving section) and a chart to ``docs/images/bench-serving.png``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.report import write_section  # noqa: E402
from scripts.server_process import free_port, wait_ready  # noqa: E402

MODEL = "cifar10_cnn"
MODEL_PATH = ROOT / "models" / MODEL / "1" / "model.onnx"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "images" / "bench-serving.png"


# Server layouts compared: the default, batching off, and two worker processes.
LAYOUTS = {
    "1 worker, batching": {"WORKERS": "1", "DYNAMIC_BATCHING": "true"},
    "1 worker, no batching": {"WORKERS": "1", "DYNAMIC_BATCHING": "false"},
    "2 workers, batching": {"WORKERS": "2", "DYNAMIC_BATCHING": "true"},
}


@dataclass(frozen=True)
class Scenario:
    label: str
    path: str
    body: bytes
    content_type: str
    images: int
    concurrency: int
    headers: tuple[str, ...] = ()
    protocol: str = "rest"  # "grpc": ModelInfer with raw UINT8, built by loadgen_grpc.py


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def v2_json(n: int, datatype: str) -> bytes:
    pixels = _pixels(n)
    data: list[Any] = (
        np.round(pixels.astype(np.float32) / 255.0, 4).ravel().tolist()
        if datatype == "FP32"
        else pixels.ravel().tolist()
    )
    body = {
        "inputs": [{"name": "images", "shape": [n, 32, 32, 3], "datatype": datatype, "data": data}]
    }
    return json.dumps(body).encode()


def v2_binary(n: int) -> tuple[bytes, tuple[str, ...]]:
    """The binary tensor extension: a JSON header, then the raw UINT8 bytes; binary outputs."""
    raw = _pixels(n).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [n, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, (f"Inference-Header-Content-Length: {len(header)}",)


def predict_png(n: int) -> bytes:
    instances = []
    for image in _pixels(n):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
    return json.dumps({"instances": instances, "top_k": 1}).encode()


def scenarios(quick: bool, grpc: bool = False) -> list[Scenario]:
    infer = f"/v2/models/{MODEL}/infer"
    predict = f"/v1/models/{MODEL}:predict"
    out: list[Scenario] = []
    for clients in (1, 16, 64) if not quick else (1, 64):
        out.append(
            Scenario("v2 FP32 JSON", infer, v2_json(1, "FP32"), "application/json", 1, clients)
        )
        body, headers = v2_binary(1)
        out.append(
            Scenario(
                "v2 UINT8 binary", infer, body, "application/octet-stream", 1, clients, headers
            )
        )
        out.append(
            Scenario(":predict b64 PNG", predict, predict_png(1), "application/json", 1, clients)
        )
    for n in (32, 256):
        out.append(Scenario("v2 UINT8 JSON", infer, v2_json(n, "UINT8"), "application/json", n, 4))
        body, headers = v2_binary(n)
        out.append(
            Scenario("v2 UINT8 binary", infer, body, "application/octet-stream", n, 4, headers)
        )
    if grpc:
        for n, clients in ((1, 1), (1, 64), (256, 4)):
            out.append(Scenario("gRPC UINT8 raw", "", b"", "", n, clients, protocol="grpc"))
    return out


def start_server(
    env: dict[str, str], grpc_port: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The server and its REST address; gRPC on ``grpc_port`` (-1: none); its log in ``log``."""
    port = free_port()  # uvicorn's workers share one socket, so the port is fixed up front
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*argv, "--grpc-port", str(grpc_port)],
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(f"http://{address}", None, 60)
        time.sleep(1.0)  # with WORKERS > 1 the other workers finish their start-up meanwhile
    except SystemExit:
        process.kill()
        raise SystemExit(f"the server did not start; its log:\n{log.read_text()}") from None
    return process, address


def load(
    address: str, scenario: Scenario, seconds: float, tmp: Path, grpc_address: str = ""
) -> dict[str, Any]:
    if scenario.protocol == "grpc":
        cmd = [
            sys.executable, str(ROOT / "scripts" / "loadgen_grpc.py"), "--address", grpc_address,
            "--model", MODEL, "--images", str(scenario.images),
            "--concurrency", str(scenario.concurrency), "--seconds", str(seconds), "--warmup", "1",
        ]  # fmt: skip
        return _run_loadgen(cmd, seconds)
    body_file = tmp / "body.bin"
    body_file.write_bytes(scenario.body)
    cmd = [
        sys.executable, str(ROOT / "scripts" / "loadgen.py"), "--address", address,
        "--path", scenario.path, "--body-file", str(body_file),
        "--content-type", scenario.content_type, "--concurrency", str(scenario.concurrency),
        "--seconds", str(seconds), "--warmup", "1", "--images", str(scenario.images),
    ]  # fmt: skip
    for header in scenario.headers:
        cmd += ["--header", header]
    return _run_loadgen(cmd, seconds)


def _run_loadgen(cmd: list[str], seconds: float) -> dict[str, Any]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode:
        raise SystemExit(f"loadgen failed: {result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def in_process(batch: int, seconds: float) -> float:
    """Images/s of onnxruntime alone on this model and batch size: the ceiling."""
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(MODEL_PATH), options, providers=["CPUExecutionProvider"])
    x = _pixels(batch)
    session.run(None, {"images": x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"images": x})
        n += batch
    return n / (time.perf_counter() - start)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Images/s per scenario, one bar per server layout side by side (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(
        dict.fromkeys((r["label"], r["images_per_request"], r["concurrency"]) for r in rows)
    )
    by_key = {(r["label"], r["images_per_request"], r["concurrency"], r["layout"]): r for r in rows}
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    width = 0.8 / len(layouts)
    fig, ax = plt.subplots(figsize=(13, 5.5))
    for n, layout in enumerate(layouts):
        values = [
            by_key[(*key, layout)]["images_per_s"] if (*key, layout) in by_key else 0
            for key in keys
        ]
        offsets = [k + (n - (len(layouts) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(offsets, values, width, label=layout)
    labels = [f"{label}\n{images} img x {clients} cl" for label, images, clients in keys]
    ax.set_xticks(range(len(keys)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("images/s (log scale)")
    ax.set_title("Serving throughput by scenario and server layout")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--quick", action="store_true", help="fewer scenarios (1 and 64 clients)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--grpc", action="store_true", help="also the gRPC service's scenarios")
    args = parser.parse_args()

    ceiling = {n: in_process(n, 3.0) for n in (1, 32, 256)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, settings in LAYOUTS.items():
            env = {**settings, "LOG_LEVEL": "warning"}
            batching = settings["DYNAMIC_BATCHING"] == "true"
            grpc_port = free_port() if args.grpc else -1
            process, address = start_server(env, grpc_port, Path(tmp) / "server.log")
            try:
                for scenario in scenarios(args.quick, args.grpc):
                    result = load(
                        address, scenario, args.seconds, Path(tmp), f"127.0.0.1:{grpc_port}"
                    )
                    result.update(label=scenario.label, batching=batching, layout=layout)
                    result["ceiling_images_per_s"] = ceiling[max(1, min(scenario.images, 256))]
                    rows.append(result)
                    print(json.dumps(result), flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)

    lines = [
        "| scenario | images/request | clients | server | requests/s | images/s "
        "| p50 ms | p90 ms | p99 ms | errors | of in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['images_per_request']} | {r['concurrency']} | "
            f"{r['layout']} | {r['requests_per_s']:,.0f} | "
            f"{r['images_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | "
            f"{r['images_per_s'] / r['ceiling_images_per_s']:.0%} |"
        )
    ceiling_line = ", ".join(f"batch {n}: {v:,.0f} images/s" for n, v in ceiling.items())
    section = "\n".join(
        [
            "## Serving",
            "",
            f"- When: {datetime.now(UTC).isoformat(timespec='seconds')}; machine: "
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores "
            "(server and load generator share them)",
            f"- Command: `python scripts/bench_serve.py --seconds {args.seconds:g}"
            f"{' --quick' if args.quick else ''}{' --grpc' if args.grpc else ''}`",
            f"- In-process onnxruntime ceiling: {ceiling_line}",
            "- Load: `scripts/loadgen.py`, closed loop, keep-alive connections, 1 s warm-up"
            + ("; gRPC: `scripts/loadgen_grpc.py`, one channel" if args.grpc else ""),
            "",
            *lines,
            "",
            "![serving throughput](images/bench-serving.png)",
        ]
    )
    print(section)
    if args.no_write:
        return
    write_section(DOC, "serving", section)
    chart(rows, CHART)


if __name__ == "__main__":
    main()
