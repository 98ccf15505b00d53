"""Side by side with the peers in one run: this service against NVIDIA Triton (PyTriton), and the
lecture recipe's training against its Keras original, written to docs/benchmarks.md.

    make bench-peers      # or: python scripts/bench_peers.py [--seconds 10] [--no-train]

Builds the peers' virtual environments in ``.cache/peers/`` if they are missing (PyTriton from
Debian's /usr/bin/python3.11, whose libpython its Python backend links; tensorflow-cpu for
``../shared/peers/keras_seed.py``). Then, one server at a time on free loopback ports, each in a
process group of its own that is stopped as a whole: ``../shared/peers/pytriton_server.py`` on the
model file, and ``python -m service``, both driven by ``scripts/loadgen.py`` with the same request
bodies; the in-process onnxruntime ceilings and the training rates are measured in the same run.
Only ratios from one run compare on this shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.report import write_section  # noqa: E402
from scripts.server_process import free_port, wait_ready  # noqa: E402

PEERS = ROOT.parent / "shared" / "peers"
VENVS = ROOT / ".cache" / "peers"
DEBIAN_PYTHON = "/usr/bin/python3.11"
DOC = ROOT / "docs" / "benchmarks.md"
LECTURE = "cifar10_cnn"
BN = "cifar10_cnn_bn"
# What each peer venv needs, and the module that proves it is installed.
VENV_PACKAGES = {
    "pytriton": (["nvidia-pytriton", "onnxruntime", "numpy"], "pytriton"),
    "keras": (["tensorflow-cpu==2.21.*", "numpy"], "tensorflow"),
}


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


def ensure_venv(name: str) -> Path:
    """The peer venv's python, made (and its packages installed) when missing."""
    packages, module = VENV_PACKAGES[name]
    venv = VENVS / name
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import {module}"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=300).returncode == 0:
        return python
    print(f"setting up {venv} ({' '.join(packages)}) ...", flush=True)
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *packages], check=True, timeout=1800
    )
    return python


def latest_version(model: str) -> Path:
    versions = [p for p in (ROOT / "models" / model).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


def request_body(datatype: str, model_name: str | None = None) -> bytes:
    """A 1-image v2 JSON body asking for the probabilities only (what the peer returns)."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    data: list[Any] = (
        np.round(pixels.astype(np.float32) / 255.0, 4).ravel().tolist()
        if datatype == "FP32"
        else pixels.ravel().tolist()
    )
    body = {
        "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": datatype, "data": data}],
        "outputs": [{"name": "probabilities"}],
    }
    return json.dumps(body).encode()


class Group:
    """A child process in a session (process group) of its own, stopped as a whole."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left of it after 20 s."""
        pgid = self.process.pid
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()
                try:
                    os.killpg(pgid, 0)  # anyone left in the group?
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def start(
    argv: list[str], env: dict[str, str], port: int, log: Path, wait_s: float, model: str = ""
) -> Group:
    """Start ``argv`` in its own group; return once it is ready (and ``model`` is, if given:
    Triton says it is ready before it has loaded its models)."""
    group = Group(argv, env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", group.process, wait_s)
        if model:
            _wait_model(f"http://127.0.0.1:{port}/v2/models/{model}/ready", group, wait_s)
    except SystemExit as exc:
        group.stop()
        raise SystemExit(f"{exc}; its log:\n{log.read_text()[-4000:]}") from None
    return group


def _wait_model(url: str, group: Group, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if group.process.poll() is not None:
            raise SystemExit("the server exited while loading its model")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200")


def loadgen(
    port: int, path: str, body: Path, clients: int, seconds: float, extra: list[str] | None = None
) -> dict[str, Any]:
    cmd = [
        sys.executable, str(ROOT / "scripts" / "loadgen.py"), "--address", f"127.0.0.1:{port}",
        "--path", path, "--body-file", str(body), "--content-type", "application/json",
        "--concurrency", str(clients), "--seconds", str(seconds), "--warmup", "1",
        *(extra or []),
    ]  # fmt: skip
    return _json_run(cmd, seconds)


def _json_run(cmd: list[str], seconds: float) -> dict[str, Any]:
    """A load generator's run: its JSON summary from stdout, or exit naming its error."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode:
        raise SystemExit(f"{Path(cmd[1]).name} failed: {result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def grpc_loadgen(port: int, model: str, seconds: float, blocking: bool) -> dict[str, Any]:
    cmd = [
        sys.executable, str(ROOT / "scripts" / "loadgen_grpc.py"), "--address",
        f"127.0.0.1:{port}", "--model", model, "--concurrency", "1", "--seconds", str(seconds),
        *(["--blocking"] if blocking else []),
    ]  # fmt: skip
    return _json_run(cmd, seconds)


def binary_body() -> tuple[bytes, str]:
    """The 1-image UINT8 binary-tensor body of ``scripts/bench_serve.py`` and its header line."""
    from scripts.bench_serve import v2_binary

    body, headers = v2_binary(1)
    return body, headers[0]


def in_process(model: Path, batch: int, threads: int, seconds: float) -> float:
    """Images/s of onnxruntime alone on ``model`` at ``batch`` with ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the service
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    session.run(["probabilities"], {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(["probabilities"], {"images": x})
        n += batch
    return n / (time.perf_counter() - t0)


def serving(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every serving figure of the run: peer and service rows, ceilings, gRPC vs REST."""
    threads = args.threads
    bodies = {}
    for w in WORKLOADS:
        path = tmp / f"{w.datatype}.json"
        path.write_bytes(request_body(w.datatype))
        bodies[w.datatype] = path
    rows: list[dict[str, Any]] = []
    # The peer: one Triton per model file (it serves one model).
    python = ensure_venv("pytriton")
    for model, datatype in ((LECTURE, "FP32"), (BN, "UINT8")):
        http, grpc = free_port(), free_port()
        env = {
            "MODEL_ONNX": str(latest_version(model)),
            "INPUT_DATATYPE": datatype,
            "ORT_THREADS": str(args.peer_threads),
            "HTTP_PORT": str(http),
            "GRPC_PORT": str(grpc),
        }
        group = start(
            [str(python), str(PEERS / "pytriton_server.py")],
            env,
            http,
            tmp / "peer.log",
            180,
            "peer",
        )
        try:
            for w in WORKLOADS:
                if w.model != model:
                    continue
                r = loadgen(
                    http, "/v2/models/peer/infer", bodies[w.datatype], w.clients, args.seconds
                )
                rows.append({**r, "server": "PyTriton", "workload": w.label})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            group.stop()
    # This service, serving every model of the repository as `make serve` does.
    http, grpc = free_port(), free_port()
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(http)]
    argv += ["--grpc-port", str(grpc)]
    env = {"LOG_LEVEL": "warning", "WORKERS": "1", "INTRA_OP_THREADS": str(threads)}
    group = start(argv, env, http, tmp / "service.log", 120)
    protocols: dict[str, dict[str, Any]] = {}
    try:
        for w in WORKLOADS:
            url = f"/v2/models/{w.model}/infer"
            r = loadgen(http, url, bodies[w.datatype], w.clients, args.seconds)
            rows.append({**r, "server": "this service", "workload": w.label})
            print(json.dumps(rows[-1]), flush=True)
        body, header = binary_body()
        (tmp / "binary.bin").write_bytes(body)
        extra = ["--header", header, "--content-type", "application/octet-stream"]
        protocols["REST binary UINT8"] = loadgen(
            http, f"/v2/models/{LECTURE}/infer", tmp / "binary.bin", 1, args.seconds, extra
        )
        protocols["gRPC raw UINT8"] = grpc_loadgen(grpc, LECTURE, args.seconds, False)
        protocols["gRPC raw UINT8, blocking client"] = grpc_loadgen(
            grpc, LECTURE, args.seconds, True
        )
        print(json.dumps(protocols), flush=True)
    finally:
        group.stop()
    ceilings = {
        (LECTURE, 1): in_process(latest_version(LECTURE), 1, threads, 3.0),
        (LECTURE, 32): in_process(latest_version(LECTURE), 32, threads, 3.0),
        (BN, 32): in_process(latest_version(BN), 32, threads, 3.0),
    }
    return {"rows": rows, "protocols": protocols, "ceilings": ceilings}


def training(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Training images/s: the lecture recipe's steps in float32 and under bf16 autocast (both
    with the package's fused Adam), then keras_seed.py's epochs."""
    torch_rates = {}
    for autocast in ("none", "bf16"):
        out = tmp / f"torch-{autocast}.json"
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--steps", "300",
             "--repeats", "3", "--autocast", autocast, "--json", str(out), "--no-write",
             "--no-onnx"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if result.returncode:
            raise SystemExit(f"bench_train failed: {result.stderr[-3000:]}")
        torch_rates[autocast] = json.loads(out.read_text())
    npz = tmp / "cifar10.npz"
    _write_keras_npz(npz)
    python = ensure_venv("keras")
    keras_json = tmp / "keras.json"
    result = subprocess.run(
        [str(python), str(PEERS / "keras_seed.py"), "--npz", str(npz),
         "--epochs", str(args.keras_epochs), "--json", str(keras_json)],
        capture_output=True, text=True, timeout=1800, cwd=tmp,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"keras_seed.py failed: {result.stderr[-3000:]}")
    keras = json.loads(keras_json.read_text())
    # The first epoch carries tf.function tracing: the last epoch's training part is the rate.
    last = keras["epochs"][-1]
    keras_rate = last["steps_per_s"] * 32
    return {"torch": torch_rates, "keras_rate": keras_rate, "keras": keras}


def _write_keras_npz(path: Path) -> None:
    from training.data import load_cifar10

    data = load_cifar10(ROOT / "data" / "cifar10-jpeg", ROOT / ".cache")
    np.savez(
        path,
        x_train=data.train.images,
        y_train=data.train.labels,
        x_test=data.test.images,
        y_test=data.test.labels,
    )


def _row(r: dict[str, Any]) -> str:
    errors = f", {r['errors']} errors" if r["errors"] else ""
    return (
        f"{r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
        + errors
    )


def section(args: argparse.Namespace, serve: dict[str, Any], train: dict[str, Any] | None) -> str:
    rows, ceilings = serve["rows"], serve["ceilings"]
    lines = [
        "| workload | clients | PyTriton | this service | requests/s ratio | p99 ratio "
        "| of in-process (batch 32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        peer = next(r for r in rows if r["server"] == "PyTriton" and r["workload"] == w.label
                    and r["concurrency"] == w.clients)  # fmt: skip
        ours = next(r for r in rows if r["server"] == "this service" and r["workload"] == w.label
                    and r["concurrency"] == w.clients)  # fmt: skip
        ceiling = ceilings[(w.model, 32)]
        lines.append(
            f"| {w.label} | {w.clients} | {_row(peer)} | {_row(ours)} | "
            f"x{ours['requests_per_s'] / peer['requests_per_s']:.2f} | "
            f"x{ours['p99_ms'] / peer['p99_ms']:.2f} | "
            f"{ours['images_per_s'] / ceiling:.0%} (peer {peer['images_per_s'] / ceiling:.0%}) |"
        )
    rest, grpc = serve["protocols"]["REST binary UINT8"], serve["protocols"]["gRPC raw UINT8"]
    blocking = serve["protocols"]["gRPC raw UINT8, blocking client"]
    ceiling_line = ", ".join(
        f"`{model}` batch {batch}: {value:,.0f} images/s"
        for (model, batch), value in ceilings.items()
    )
    out = [
        "## Side by side with the peers",
        "",
        f"- When: {datetime.now(UTC).isoformat(timespec='seconds')}; machine: "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores shared by servers, client "
        "and any other work on the machine (what else ran: next section)",
        f"- Command: `python scripts/bench_peers.py --seconds {args.seconds:g}"
        f"{' --no-train' if args.no_train else ''}` (`make bench-peers`)",
        "- Servers, one after the other: PyTriton (`../shared/peers/pytriton_server.py`: Triton's "
        "dynamic batcher, 64 images / 3 ms, onnxruntime in its Python callable) and `python -m "
        f"service` (1 worker, defaults); onnxruntime intra-op threads: peer {args.peer_threads} "
        f"(its default), service {args.threads} (its default on 2 cores)",
        "- Client: `scripts/loadgen.py`, closed loop, keep-alive, 1 s warm-up, "
        f"{args.seconds:g} s per figure; the same 1-image v2 JSON bodies (outputs: probabilities)",
        f"- In-process onnxruntime ({args.threads} threads, no spinning, as the service's "
        f"sessions; same run): {ceiling_line}",
        "",
        *lines,
        "",
        "gRPC (`scripts/loadgen_grpc.py`) vs REST binary (`scripts/loadgen.py`), 1 image UINT8, "
        f"1 client, lecture model, this service: REST binary p50 {rest['p50_ms']:.2f} ms; gRPC "
        f"p50 {grpc['p50_ms']:.2f} ms with the grpc.aio client "
        f"(x{grpc['p50_ms'] / rest['p50_ms']:.2f}), {blocking['p50_ms']:.2f} ms with grpcio's "
        "blocking client "
        f"(x{blocking['p50_ms'] / rest['p50_ms']:.2f}).",
    ]
    if train is not None:
        keras = train["keras"]
        out += [
            "",
            "| training, lecture CNN, batch 32, Adam | images/s | ratio to Keras |",
            "|---|---|---|",
        ]
        for autocast, label in (("none", "float32"), ("bf16", "bf16 autocast")):
            rates = train["torch"][autocast]["rates"]
            torch_rate = sorted(rates)[len(rates) // 2]
            out.append(
                f"| PyTorch, the project's recipe, {label} ({train['torch'][autocast]['how']}) "
                f"| {torch_rate:,.0f} (repeats: {', '.join(f'{r:,.0f}' for r in rates)}) "
                f"| x{torch_rate / train['keras_rate']:.2f} |"
            )
        out.append(
            f"| Keras `keras_seed.py` (tensorflow {keras['tf_version']}, epoch "
            f"{keras['epochs'][-1]['epoch']} of {len(keras['epochs'])}, training part) "
            f"| {train['keras_rate']:,.0f} | x1.00 |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        serve = serving(args, tmp)
        train = None if args.no_train else training(args, tmp)
    text = section(args, serve, train)
    print(text)
    if not args.no_write:
        write_section(DOC, "peers", text)


if __name__ == "__main__":
    main()
