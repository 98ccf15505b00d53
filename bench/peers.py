"""Side by side with the peers in one run: this service against NVIDIA Triton (PyTriton), and the
lecture recipe's training against its Keras original.

    make bench-peers      # or: python -m bench peers [--seconds 10] [--modes shared,pinned]
                          #     [--serving-rounds 5] [--no-train] [--no-write]
    python -m bench peers --train-only [--train-rounds 5]   # the training rows alone

Builds the peers' virtual environments in ``.cache/peers/`` if they are missing
(``bench.peer_envs``). Then, for each placement (``bench.placement``: ``shared``, everything
anywhere; ``pinned``, every server on one core and the load generator on the other, by taskset),
one server at a time on free loopback ports, each in a process group of its own that is stopped as
a whole: ``../shared/peers/pytriton_server.py`` on the model file, ``python -m service`` and the
raw ASGI ceiling ``../shared/peers/ceiling_asgi.py``, all driven by ``bench.loadgen`` with the same
request bodies; then the service and the raw app at once, one client alternating requests between
them (``bench.alternating``: the one-client gap, free of the machine's swings). PyTriton and this
service run in ``--serving-rounds`` rounds taking turns at going first, each ratio the median of
the rounds' (``bench.peer_rounds``). The in-process onnxruntime ceilings (on the server's core when
pinned) and the training rates (``bench.peer_training``) are measured in the same run, and the
issue's targets judged on the pinned figures (``bench.peer_targets``). Only ratios from one run
compare on this shared machine. Writes ``docs/results/peers.json`` (``--train-only``:
``docs/results/peer-training.json``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from bench.alternating import against_raw
from bench.bodies import v2_json
from bench.load import http_load
from bench.onnx_timer import latest_version
from bench.peer_envs import PEERS, ensure_venv
from bench.peer_limits import asgi_rows, ceiling_rows, grpc_limit, protocol_p50s
from bench.peer_rounds import client_cpus, protocol_figures, workload_rows
from bench.peer_targets import judge
from bench.peer_training import training
from bench.peer_workloads import BN, LECTURE, PROBABILITIES, WORKLOADS, Workload
from bench.placement import Affinity, Placement, group_affinity, placements
from bench.publish import publish
from bench.server import free_port, running_service, start


def _json_load(port: int, path: str, w: Workload, seconds: float, cpus: str | None) -> Any:
    body = v2_json(1, w.datatype, PROBABILITIES)
    address = f"127.0.0.1:{port}"
    return http_load(address, path, body, clients=w.clients, seconds=seconds, cpus=cpus)


Rows = dict[tuple[str, int], dict[str, Any]]


def peer_rows(args: argparse.Namespace, tmp: Path, place: Placement) -> tuple[Rows, list[Any]]:
    """PyTriton's figure for each workload: one Triton per model file (it serves one model);
    with what each Triton's processes and threads were allowed to run on. Pinned, its onnxruntime
    has one intra-op thread, as ours has."""
    python = ensure_venv("pytriton")
    threads = 1 if place.pinned else args.peer_threads
    rows, affinity = {}, []
    for model, datatype in ((LECTURE, "FP32"), (BN, "UINT8")):
        http, grpc = free_port(), free_port()
        env = {
            "MODEL_ONNX": str(latest_version(model)), "INPUT_DATATYPE": datatype,
            "ORT_THREADS": str(threads), "HTTP_PORT": str(http), "GRPC_PORT": str(grpc),
        }  # fmt: skip
        argv = place.server([str(python), str(PEERS / "pytriton_server.py")])
        group = start(argv, env, http, tmp / "peer.log", 180, "peer")
        try:
            for w in (w for w in WORKLOADS if w.model == model):
                row = _json_load(http, "/v2/models/peer/infer", w, args.seconds, place.client_cpus)
                rows[(w.label, w.clients)] = row
                print(json.dumps(row), flush=True)
            affinity.append({"model": model, **group_affinity(group.process.pid)})
        finally:
            group.stop()
    return rows, affinity


def service_env(args: argparse.Namespace, place: Placement) -> dict[str, str]:
    """The service's settings: pinned to one core, one onnxruntime intra-op thread (more would
    only queue on that core); shared, ``--threads``."""
    threads = 1 if place.pinned else args.threads
    return {"LOG_LEVEL": "warning", "WORKERS": args.workers, "INTRA_OP_THREADS": str(threads)}


def service_rows(
    args: argparse.Namespace, tmp: Path, place: Placement
) -> tuple[Rows, dict[str, Any], Affinity]:
    """This service's figure for each workload (every model of the repository served, as `make
    serve` does), then gRPC against REST binary at 1 client: p50s and their ratios; and what the
    server's processes and threads were allowed to run on."""
    rows, cpus = {}, place.client_cpus
    env = service_env(args, place)
    with running_service(env, tmp / "service.log", cpus=place.server_cpus) as server:
        for w in WORKLOADS:
            row = _json_load(server.port, f"/v2/models/{w.model}/infer", w, args.seconds, cpus)
            rows[(w.label, w.clients)] = row
            print(json.dumps(row), flush=True)
        protocols = protocol_p50s(server, args.seconds, cpus)
        affinity = group_affinity(server.pgid)
    print(json.dumps(protocols), flush=True)
    return rows, protocols, affinity


def _round(args: argparse.Namespace, tmp: Path, place: Placement, n: int) -> dict[str, Any]:
    """One round of both servers' loads, PyTriton first in even rounds, this service in odd."""
    first = "peer" if n % 2 == 0 else "ours"
    print(f"-- round {n + 1} of {args.serving_rounds}, {first} first", flush=True)
    found: dict[str, Any] = {"first": first}
    for side in ("peer", "ours") if first == "peer" else ("ours", "peer"):
        if side == "peer":
            found["peer"], found["peer_affinity"] = peer_rows(args, tmp, place)
        else:
            found["ours"], found["protocols"], found["our_affinity"] = service_rows(
                args, tmp, place
            )
    return found


def serving_mode(args: argparse.Namespace, tmp: Path, place: Placement) -> dict[str, Any]:
    """Every serving figure of one placement: both servers per workload in rounds that take
    turns (``bench.peer_rounds``), the medians of their ratios, then the limits."""
    print(f"== {place.mode}: server on {place.server_cpus or 'any core'}, load generator on "
          f"{place.client_cpus or 'any core'}", flush=True)  # fmt: skip
    load_before = os.getloadavg()[0]
    rounds = [_round(args, tmp, place, n) for n in range(args.serving_rounds)]
    asgi = asgi_rows(args.seconds, tmp, place)
    alternating = against_raw(service_env(args, place), args.alternating_turns, place)
    grpc_floor = grpc_limit(args.seconds, tmp, place)
    threads = 1 if place.pinned else args.threads
    ceilings = ceiling_rows(place, threads)
    batch_32 = {c["model"]: c["images_per_s"] for c in ceilings
                if c["batch"] == 32 and c["threads"] == threads}  # fmt: skip
    last = rounds[-1]
    return {
        "server_cpus": place.server_cpus, "client_cpus": place.client_cpus, "threads": threads,
        "peer_threads": 1 if place.pinned else args.peer_threads,
        "load_average": [load_before, os.getloadavg()[0]],
        "client_ran_on": client_cpus(rounds, asgi),
        "affinity": {"peer": last["peer_affinity"], "ours": last["our_affinity"]},
        "rounds": [r["first"] for r in rounds],
        "workloads": workload_rows(rounds, batch_32), "protocols": protocol_figures(rounds),
        "ceilings": ceilings, "asgi": asgi, "grpc_limit": grpc_floor, "alternating": alternating,
    }  # fmt: skip


def serving(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every serving figure of the run, each placement in turn, and the targets judged."""
    chosen = placements(args.modes.split(","), args.server_cpu, args.client_cpu)
    modes = {place.mode: serving_mode(args, tmp, place) for place in chosen}
    return {"modes": modes, "targets": judge(modes)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per figure")
    parser.add_argument(
        "--threads", type=int, default=2, help="the service's onnxruntime threads, shared"
    )
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=1,
        help="the peer's onnxruntime threads, shared (its default; with 2 its spinning pool "
        "starves Triton's own threads on 2 cores); pinned, both servers have 1",
    )
    parser.add_argument(
        "--modes",
        default="shared,pinned",
        help="placements, in order: shared (anywhere) and/or pinned (server on one core, load "
        "generator on another, by taskset)",
    )
    parser.add_argument("--server-cpu", type=int, default=None, help="pinned: the server's core")
    parser.add_argument("--client-cpu", type=int, default=None, help="pinned: the client's core")
    parser.add_argument("--workers", default="1", help="the service's WORKERS")
    parser.add_argument(
        "--serving-rounds",
        type=_positive,
        default=5,
        help="rounds of both servers per placement, taking turns at going first; each ratio is "
        "the median of the rounds'",
    )
    parser.add_argument(
        "--alternating-turns",
        type=_positive,
        default=6000,
        help="one client alternating requests between the service and the raw ASGI app "
        "(bench.alternating): turns per placement",
    )
    parser.add_argument("--keras-epochs", type=int, default=2)
    parser.add_argument(
        "--train-rounds", type=_positive, default=5, help="pairs of the bf16 recipe and Keras"
    )
    parser.add_argument("--no-train", action="store_true", help="serving only")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="the training rows alone (the lecture recipe against Keras): peer-training.json",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.train_only:
            machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
            publish("peer-training", {"machine": machine, "training": training(args, tmp)},
                    args.no_write)  # fmt: skip
            return
        results = {
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "seconds": args.seconds,
            "threads": args.threads,
            "peer_threads": args.peer_threads,
            "workers": args.workers,
            **serving(args, tmp),
            "training": None if args.no_train else training(args, tmp),
        }
    publish("peers", results, args.no_write)
