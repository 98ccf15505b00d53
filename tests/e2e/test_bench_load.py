"""The benchmarks' one server helper and one load-generator runner against a real
``python -m service``: REST and gRPC answer every request of a short closed-loop run, and the
server's statistics for the run come back beside the client's latency; pinned, the server and
the load generators stay on their own cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.bodies import v2_binary
from bench.load import grpc_load, http_load
from bench.placement import group_affinity, pinned
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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores")
def test_a_pinned_run_keeps_the_server_and_the_load_generators_on_their_own_cores(
    tmp_path: Path,
) -> None:
    place = pinned()
    env = {"LOG_LEVEL": "warning", "WORKERS": "1", "INTRA_OP_THREADS": "1"}
    with running_service(env, tmp_path / "server.log", cpus=place.server_cpus) as server:
        body, headers = v2_binary(1)
        rest = http_load(
            server.address, "/v2/models/cifar10_cnn/infer", body, clients=2, seconds=0.5,
            content_type="application/octet-stream", headers=headers, cpus=place.client_cpus,
        )  # fmt: skip
        grpc = grpc_load(
            server.grpc_address, "cifar10_cnn", images=1, clients=2, seconds=0.5,
            cpus=place.client_cpus,
        )  # fmt: skip
        where = group_affinity(server.pgid)
    assert where["processes"] >= 1 and where["threads"] > 1
    assert where["cpus"] == [place.server_cpus]
    for summary in (rest, grpc):
        assert summary["errors"] == 0 and summary["cpus"] == [int(str(place.client_cpus))]
