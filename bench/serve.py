"""Serving benchmark: the real server, a load generator in another process, in-process ceiling.

    make bench            # or: python -m bench serve [--seconds 5] [--quick] [--grpc] [--no-write]

Starts ``python -m service`` on free loopback ports (batching on, then off, then two workers),
drives it with ``bench.loadgen`` for each scenario, measures the same model run in process by
onnxruntime at the same batch sizes (the ceiling); with ``--grpc`` also the gRPC service, driven
by ``bench.loadgen_grpc`` (raw UINT8 tensors). Writes ``docs/results/serving.json``, renders the
docs from it and draws ``docs/images/bench-serving.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bodies import predict_png, v2_binary, v2_json
from bench.load import grpc_load, http_load
from bench.onnx_timer import images_per_second
from bench.publish import publish
from bench.results import ROOT
from bench.server import Service, running_service

MODEL = "cifar10_cnn"
MODEL_PATH = ROOT / "models" / MODEL / "1" / "model.onnx"
CHART = ROOT / "docs" / "images" / "bench-serving.png"
CEILING_BATCHES = (1, 32, 256)

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
    protocol: str = "rest"  # "grpc": ModelInfer with raw UINT8, built by bench.loadgen_grpc


def binary_scenario(n: int, clients: int) -> Scenario:
    """``n`` images per request in the binary tensor extension, from ``clients`` clients."""
    body, headers = v2_binary(n)
    infer = f"/v2/models/{MODEL}/infer"
    return Scenario("v2 UINT8 binary", infer, body, "application/octet-stream", n, clients, headers)


def fp32_scenario(clients: int) -> Scenario:
    """One image per request as v2 FP32 JSON, from ``clients`` clients."""
    infer = f"/v2/models/{MODEL}/infer"
    return Scenario("v2 FP32 JSON", infer, v2_json(1, "FP32"), "application/json", 1, clients)


def scenarios(quick: bool, grpc: bool = False) -> list[Scenario]:
    infer = f"/v2/models/{MODEL}/infer"
    predict = f"/v1/models/{MODEL}:predict"
    out: list[Scenario] = []
    for clients in (1, 16, 64) if not quick else (1, 64):
        out.append(fp32_scenario(clients))
        out.append(binary_scenario(1, clients))
        out.append(
            Scenario(":predict b64 PNG", predict, predict_png(1), "application/json", 1, clients)
        )
    for n in (32, 256):
        out.append(Scenario("v2 UINT8 JSON", infer, v2_json(n, "UINT8"), "application/json", n, 4))
        out.append(binary_scenario(n, 4))
    if grpc:
        for n, clients in ((1, 1), (1, 64), (256, 4)):
            out.append(Scenario("gRPC UINT8 raw", "", b"", "", n, clients, protocol="grpc"))
    return out


def load(
    server: Service, scenario: Scenario, seconds: float, cpus: str | None = None
) -> dict[str, Any]:
    """One scenario's load against ``server``: the load generator's summary (``cpus``: the load
    generator pinned there)."""
    if scenario.protocol == "grpc":
        return grpc_load(
            server.grpc_address, MODEL, images=scenario.images,
            clients=scenario.concurrency, seconds=seconds, cpus=cpus,
        )  # fmt: skip
    return http_load(
        server.address, scenario.path, scenario.body, clients=scenario.concurrency,
        seconds=seconds, content_type=scenario.content_type, headers=scenario.headers,
        images=scenario.images, cpus=cpus,
    )  # fmt: skip


def measure(args: argparse.Namespace, ceiling: dict[int, float]) -> list[dict[str, Any]]:
    """Every scenario against every layout: one row each, with its share of the ceiling."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, settings in LAYOUTS.items():
            env = {**settings, "LOG_LEVEL": "warning"}
            log = Path(tmp) / "server.log"
            with running_service(env, log, grpc=args.grpc, wait_s=60, settle_s=1.0) as server:
                for scenario in scenarios(args.quick, args.grpc):
                    result = load(server, scenario, args.seconds)
                    result.update(
                        label=scenario.label,
                        batching=settings["DYNAMIC_BATCHING"] == "true",
                        layout=layout,
                    )
                    top = ceiling[max(1, min(scenario.images, 256))]
                    result["ceiling_images_per_s"] = top
                    result["of_ceiling"] = result["images_per_s"] / top
                    rows.append(result)
                    print(json.dumps(result), flush=True)
    return rows


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--quick", action="store_true", help="fewer scenarios (1 and 64 clients)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--grpc", action="store_true", help="also the gRPC service's scenarios")


def main(args: argparse.Namespace) -> None:
    ceiling = {n: images_per_second(MODEL_PATH, n, 3.0) for n in CEILING_BATCHES}
    rows = measure(args, ceiling)
    results = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "grpc": args.grpc,
        "ceiling_images_per_s": {str(n): v for n, v in ceiling.items()},
        "rows": rows,
    }
    publish("serving", results, args.no_write)
    if not args.no_write:
        chart(rows, CHART)
