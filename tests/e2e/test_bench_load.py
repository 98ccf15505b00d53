"""The benchmarks' one server helper and one load-generator runner against a real
``python -m service``: REST and gRPC answer every request of a short closed-loop run, and the
server's statistics for the run come back beside the client's latency."""

from __future__ import annotations

from pathlib import Path

from bench.bodies import v2_binary
from bench.load import grpc_load, http_load
from bench.server import running_service


def test_the_load_generators_drive_a_real_server_without_errors(tmp_path: Path) -> None:
    env = {"LOG_LEVEL": "warning", "WORKERS": "1"}
    with running_service(env, tmp_path / "server.log") as server:
        body, headers = v2_binary(1)
        rest = http_load(
            server.address, "/v2/models/cifar10_cnn/infer", body, clients=2, seconds=0.5,
            content_type="application/octet-stream", headers=headers,
        )  # fmt: skip
        grpc = grpc_load(server.grpc_address, "cifar10_cnn", images=1, clients=2, seconds=0.5)
    for summary in (rest, grpc):
        assert summary["requests"] > 0 and summary["errors"] == 0, summary
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
        server = summary["server"]  # perf_analyzer's view: the server's statistics extension
        assert server["requests"] > 0 and server["compute_infer_ms"] > 0
