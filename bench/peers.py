"""Side by side with the peers in one run: this service against NVIDIA Triton (PyTriton), and the
lecture recipe's training against its Keras original.

    make bench-peers      # or: python -m bench peers [--seconds 10] [--no-train] [--no-write]

Builds the peers' virtual environments in ``.cache/peers/`` if they are missing
(``bench.peer_envs``). Then, one server at a time on free loopback ports, each in a process group
of its own that is stopped as a whole: ``../shared/peers/pytriton_server.py`` on the model file,
and ``python -m service``, both driven by ``bench.loadgen`` with the same request bodies; the
in-process onnxruntime ceilings and the training rates are measured in the same run. Only ratios
from one run compare on this shared machine. Writes ``docs/results/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.bodies import v2_binary, v2_json
from bench.load import grpc_load, http_load
from bench.onnx_timer import images_per_second, latest_version
from bench.peer_envs import PEERS, ensure_venv
from bench.publish import publish
from bench.results import ROOT
from bench.server import free_port, running_service, start

LECTURE = "cifar10_cnn"
BN = "cifar10_cnn_bn"
PROBABILITIES = ["probabilities"]  # what the peer returns; both servers are asked for it only


@dataclass(frozen=True)
class Workload:
    """One load: a model, its request body (the same bytes for both servers) and clients."""

    label: str
    model: str
    datatype: str  # FP32 or UINT8, JSON
    clients: int


WORKLOADS = [
    Workload("lecture model, FP32 JSON", LECTURE, "FP32", 1),
    Workload("lecture model, FP32 JSON", LECTURE, "FP32", 64),
    Workload("cifar10_cnn_bn, UINT8 JSON", BN, "UINT8", 64),
]


def _json_load(port: int, path: str, w: Workload, seconds: float) -> dict[str, Any]:
    body = v2_json(1, w.datatype, PROBABILITIES)
    return http_load(f"127.0.0.1:{port}", path, body, clients=w.clients, seconds=seconds)


def peer_rows(args: argparse.Namespace, tmp: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """PyTriton's figure for each workload: one Triton per model file (it serves one model)."""
    python = ensure_venv("pytriton")
    rows = {}
    for model, datatype in ((LECTURE, "FP32"), (BN, "UINT8")):
        http, grpc = free_port(), free_port()
        env = {
            "MODEL_ONNX": str(latest_version(model)), "INPUT_DATATYPE": datatype,
            "ORT_THREADS": str(args.peer_threads), "HTTP_PORT": str(http), "GRPC_PORT": str(grpc),
        }  # fmt: skip
        argv = [str(python), str(PEERS / "pytriton_server.py")]
        group = start(argv, env, http, tmp / "peer.log", 180, "peer")
        try:
            for w in (w for w in WORKLOADS if w.model == model):
                rows[(w.label, w.clients)] = _json_load(
                    http, "/v2/models/peer/infer", w, args.seconds
                )
                print(json.dumps(rows[(w.label, w.clients)]), flush=True)
        finally:
            group.stop()
    return rows


def service_rows(
    args: argparse.Namespace, tmp: Path
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, Any]]:
    """This service's figure for each workload (every model of the repository served, as `make
    serve` does), then gRPC against REST binary at 1 client: p50s and their ratios."""
    env = {"LOG_LEVEL": "warning", "WORKERS": "1", "INTRA_OP_THREADS": str(args.threads)}
    rows = {}
    with running_service(env, tmp / "service.log") as server:
        for w in WORKLOADS:
            rows[(w.label, w.clients)] = _json_load(
                server.port, f"/v2/models/{w.model}/infer", w, args.seconds
            )
            print(json.dumps(rows[(w.label, w.clients)]), flush=True)
        body, headers = v2_binary(1)
        rest = http_load(
            server.address, f"/v2/models/{LECTURE}/infer", body, clients=1,
            seconds=args.seconds, content_type="application/octet-stream", headers=headers,
        )  # fmt: skip
        grpc, blocking = (
            grpc_load(server.grpc_address, LECTURE, images=1, clients=1,
                      seconds=args.seconds, blocking=b)
            for b in (False, True)
        )  # fmt: skip
    protocols = {
        "rest_binary_p50_ms": rest["p50_ms"],
        "grpc_p50_ms": grpc["p50_ms"],
        "grpc_ratio": grpc["p50_ms"] / rest["p50_ms"],
        "blocking_p50_ms": blocking["p50_ms"],
        "blocking_ratio": blocking["p50_ms"] / rest["p50_ms"],
    }
    print(json.dumps(protocols), flush=True)
    return rows, protocols


def serving(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every serving figure of the run: both servers per workload, ratios, ceilings."""
    peer = peer_rows(args, tmp)
    ours, protocols = service_rows(args, tmp)
    ceilings = [
        {"model": model, "batch": batch, "images_per_s": images_per_second(
            latest_version(model), batch, 3.0, threads=args.threads, outputs=PROBABILITIES)}
        for model, batch in ((LECTURE, 1), (LECTURE, 32), (BN, 32))
    ]  # fmt: skip
    top = {(c["model"], c["batch"]): c["images_per_s"] for c in ceilings}
    workloads = []
    for w in WORKLOADS:
        p, o, ceiling = peer[(w.label, w.clients)], ours[(w.label, w.clients)], top[(w.model, 32)]
        workloads.append({
            "label": w.label, "clients": w.clients, "peer": p, "ours": o,
            "rps_ratio": o["requests_per_s"] / p["requests_per_s"],
            "p99_ratio": o["p99_ms"] / p["p99_ms"],
            "of_ceiling": o["images_per_s"] / ceiling,
            "peer_of_ceiling": p["images_per_s"] / ceiling,
        })  # fmt: skip
    return {"workloads": workloads, "protocols": protocols, "ceilings": ceilings}


def torch_rate(autocast: str, tmp: Path) -> dict[str, Any]:
    """The lecture recipe's training rate under ``autocast``, by ``python -m bench train``."""
    out = tmp / f"torch-{autocast}.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--steps", "300", "--repeats", "3",
         "--autocast", autocast, "--json", str(out), "--no-write", "--no-onnx"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"bench train failed: {result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(out.read_text())
    return measured


def training(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Training images/s: the lecture recipe's steps in float32 and under bf16 autocast (both
    with the package's fused Adam), then keras_seed.py's epochs."""
    measured = {autocast: torch_rate(autocast, tmp) for autocast in ("none", "bf16")}
    npz = tmp / "cifar10.npz"
    _write_keras_npz(npz)
    keras_json = tmp / "keras.json"
    result = subprocess.run(
        [str(ensure_venv("keras")), str(PEERS / "keras_seed.py"), "--npz", str(npz),
         "--epochs", str(args.keras_epochs), "--json", str(keras_json)],
        capture_output=True, text=True, timeout=1800, cwd=tmp,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"keras_seed.py failed: {result.stderr[-3000:]}")
    keras = json.loads(keras_json.read_text())
    # The first epoch carries tf.function tracing: the last epoch's training part is the rate.
    last = keras["epochs"][-1]
    keras_rate = last["steps_per_s"] * 32
    rows = []
    for autocast, label in (("none", "float32"), ("bf16", "bf16 autocast")):
        rates = measured[autocast]["rates"]
        rate = sorted(rates)[len(rates) // 2]
        rows.append({"label": label, "how": measured[autocast]["how"], "rates": rates,
                     "images_per_s": rate, "keras_ratio": rate / keras_rate})  # fmt: skip
    return {
        "torch": rows,
        "keras": {"tf_version": keras["tf_version"], "epoch": last["epoch"],
                  "epochs": len(keras["epochs"]), "images_per_s": keras_rate},
    }  # fmt: skip


def _write_keras_npz(path: Path) -> None:
    from training.data import load_cifar10

    data = load_cifar10(ROOT / "data" / "cifar10-jpeg", ROOT / ".cache")
    np.savez(path, x_train=data.train.images, y_train=data.train.labels,
             x_test=data.test.images, y_test=data.test.labels)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per figure")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=1,
        help="the peer's onnxruntime threads (its default; with 2 its spinning pool starves "
        "Triton's own threads on 2 cores)",
    )
    parser.add_argument("--keras-epochs", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="serving only")
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results = {
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "seconds": args.seconds,
            "threads": args.threads,
            "peer_threads": args.peer_threads,
            **serving(args, tmp),
            "training": None if args.no_train else training(args, tmp),
        }
    publish("peers", results, args.no_write)
