"""gRPC against REST binary with one C client, so that the client's own cost is the same for
both: h2load (Debian's nghttp2-client) sends the same 1-image UINT8 request over h2c (gRPC) and
HTTP/1.1 (REST, the binary extension), one connection, one request at a time (issue 16).

    python scripts/bench_grpc_h2load.py [--seconds 10] [--repeats 2]

Starts ``python -m service`` on free loopback ports, checks each request once with a real
client, then prints p50/p99 per protocol and repeat from h2load's per-request log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.loadgen_grpc import METHOD, infer_request  # noqa: E402
from scripts.server_process import free_port, wait_ready  # noqa: E402


def bodies(model: str) -> tuple[bytes, bytes, int]:
    """The gRPC message (length-prefixed, as on the wire), the REST body and its header length,
    both carrying the pixels that ``scripts/loadgen_grpc.py`` sends."""
    message = infer_request(model, 1)
    pixels = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    header = json.dumps(
        {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                     "parameters": {"binary_data_size": pixels.size}}],
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    framed = b"\0" + struct.pack(">I", len(message)) + message
    return framed, header + pixels.tobytes(), len(header)


def percentiles(log: Path) -> tuple[int, float, float]:
    """Requests, p50 and p99 in ms from h2load's log (start us, status, duration us)."""
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    if any(row[1] != "200" for row in rows):
        raise SystemExit(f"non-200 answers in {log}")
    durations = sorted(int(row[2]) / 1000 for row in rows)
    return len(durations), durations[len(durations) // 2], durations[int(len(durations) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="cifar10_cnn")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, PORT=str(port), GRPC_PORT=str(grpc_port))
    server = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        framed, rest, header_length = bodies(args.model)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = channel.unary_unary(METHOD)(framed[5:])
        assert service_pb2.ModelInferResponse.FromString(reply).outputs[0].name == "probabilities"
        infer = f"http://127.0.0.1:{port}/v2/models/{args.model}/infer"
        rest_headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(header_length),
        }
        with urllib.request.urlopen(urllib.request.Request(infer, rest, rest_headers)) as answer:
            assert answer.status == 200
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "grpc.bin").write_bytes(framed)
            (Path(tmp) / "rest.bin").write_bytes(rest)
            commands = {
                "gRPC (h2c)": [
                    "-d", f"{tmp}/grpc.bin", "-H", "content-type: application/grpc",
                    "-H", "te: trailers", f"http://127.0.0.1:{grpc_port}{METHOD}",
                ],
                "REST binary (HTTP/1.1)": [
                    "--h1", "-d", f"{tmp}/rest.bin",
                    *(arg for k, v in rest_headers.items() for arg in ("-H", f"{k}: {v}")),
                    infer,
                ],
            }  # fmt: skip
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
                    print(f"{name}, repeat {repeat + 1}: {n} requests, p50 {p50:.3f} ms, "
                          f"p99 {p99:.3f} ms")  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


if __name__ == "__main__":
    main()
