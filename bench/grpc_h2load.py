"""gRPC against REST binary with one C client, so that the client's own cost is the same for
both: h2load (Debian's nghttp2-client) sends the same 1-image UINT8 request over h2c (gRPC) and
HTTP/1.1 (REST, the binary extension), one connection, one request at a time (issue 16).

    python -m bench grpc [--seconds 10] [--repeats 2] [--no-write]

Starts ``python -m service`` on free loopback ports, checks each request once with a real
client, then records requests, p50 and p99 per protocol and repeat from h2load's per-request log
in ``docs/results/grpc-h2load.json``.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from bench.bodies import v2_binary_parts
from bench.loadgen_grpc import METHOD, infer_request
from bench.publish import publish
from bench.server import Service, running_service


def bodies(model: str) -> tuple[bytes, bytes, int]:
    """The gRPC message (length-prefixed, as on the wire), the REST body and its header length,
    both carrying the pixels that ``bench.loadgen_grpc`` sends."""
    message = infer_request(model, 1)
    header, raw = v2_binary_parts(1)
    framed = b"\0" + struct.pack(">I", len(message)) + message
    return framed, header + raw, len(header)


def percentiles(log: Path) -> tuple[int, float, float]:
    """Requests, p50 and p99 in ms from h2load's log (start us, status, duration us)."""
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    if any(row[1] != "200" for row in rows):
        raise SystemExit(f"non-200 answers in {log}")
    durations = sorted(int(row[2]) / 1000 for row in rows)
    return len(durations), durations[len(durations) // 2], durations[int(len(durations) * 0.99)]


def check_once(
    server: Service, model: str, framed: bytes, rest: bytes, headers: dict[str, str]
) -> None:
    """Each request answered once by a real client before h2load repeats it."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = channel.unary_unary(METHOD)(framed[5:])
    assert service_pb2.ModelInferResponse.FromString(reply).outputs[0].name == "probabilities"
    infer = f"http://{server.address}/v2/models/{model}/infer"
    with urllib.request.urlopen(urllib.request.Request(infer, rest, headers)) as answer:
        assert answer.status == 200


def h2load_commands(
    server: Service, model: str, tmp: str, headers: dict[str, str]
) -> dict[str, list[str]]:
    return {
        "gRPC (h2c)": [
            "-d", f"{tmp}/grpc.bin", "-H", "content-type: application/grpc",
            "-H", "te: trailers", f"http://{server.grpc_address}{METHOD}",
        ],
        "REST binary (HTTP/1.1)": [
            "--h1", "-d", f"{tmp}/rest.bin",
            *(arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")),
            f"http://{server.address}/v2/models/{model}/infer",
        ],
    }  # fmt: skip


def measure(args: argparse.Namespace, server: Service) -> list[dict[str, Any]]:
    framed, rest, header_length = bodies(args.model)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(header_length),
    }
    check_once(server, args.model, framed, rest, headers)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "grpc.bin").write_bytes(framed)
        (Path(tmp) / "rest.bin").write_bytes(rest)
        commands = h2load_commands(server, args.model, tmp, headers)
        for repeat in range(args.repeats):
            for name, command in commands.items():
                log = Path(tmp) / "log.txt"
                log.unlink(missing_ok=True)
                subprocess.run(
                    ["h2load", "-c1", "-m1", "-D", str(args.seconds), "--warm-up-time", "1",
                     "--log-file", str(log), *command],
                    check=True, capture_output=True,
                )  # fmt: skip
                n, p50, p99 = percentiles(log)
                runs.append({"protocol": name, "repeat": repeat + 1, "requests": n,
                             "p50_ms": p50, "p99_ms": p99})  # fmt: skip
    return runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="cifar10_cnn")
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service({"WORKERS": "1"}, Path(tmp) / "server.log") as server,  # one process
    ):
        runs = measure(args, server)
    results = {"seconds": args.seconds, "repeats": args.repeats, "model": args.model, "runs": runs}
    publish("grpc-h2load", results, args.no_write)
