"""End to end: ``python -m service --workers 2`` answers as one server. A repository call made
to one worker holds in both before it is answered (and in a worker restarted after a kill -9),
/metrics and the statistics add both workers up (the quality metrics of the prediction log
too), and both serve gRPC on the one port."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.support.servers import ServerProcess, wait_until
from tests.support.workers import serving, two_workers, workers

pytestmark = pytest.mark.slow  # two server processes start (and one restarts) per test

IMAGE = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
BODY = {
    "inputs": [
        {
            "name": "images",
            "shape": [1, 32, 32, 3],
            "datatype": "UINT8",
            "data": IMAGE.ravel().tolist(),
        }
    ]
}
INFER = "/v2/models/tiny/infer"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with two_workers(tmp_path, WORKERS_DIR=str(tmp_path / "workers")) as running:
        yield running


def requests_counted(server: ServerProcess) -> float:
    """Every HTTP request /metrics counted, every worker's (a scrape, on a new connection)."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        text = client.get("/metrics").text
    return sum(float(v) for v in re.findall(r"^http_requests_total\{.*\} (\S+)$", text, re.M))


def fresh_answers(server: ServerProcess, path: str, count: int) -> list[int]:
    """Status codes of ``count`` requests, each over a new connection (the kernel spreads new
    connections over the workers)."""
    codes = []
    for _ in range(count):
        with httpx.Client(base_url=server.url, timeout=10) as client:
            if path == INFER:
                codes.append(client.post(path, json=BODY).status_code)
            else:
                codes.append(client.get(path).status_code)
    return codes


def test_a_repository_call_to_one_worker_holds_in_every_worker_and_a_restarted_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    assert fresh_answers(server, "/v2/models/tiny/ready", 20) == [200] * 20
    unload = httpx.post(f"{server.url}/v2/repository/models/tiny/unload", timeout=90)
    assert unload.status_code == 200, unload.text
    # Answered only once both workers unloaded it: every worker agrees at once.
    assert fresh_answers(server, INFER, 30) == [404] * 30
    assert fresh_answers(server, "/v2/models/other/ready", 10) == [200] * 10

    # kill -9 one worker: the other keeps answering, a new one appears and keeps the unload
    killed = workers(server)[0]
    counted = requests_counted(server)
    os.kill(killed, signal.SIGKILL)
    assert fresh_answers(server, "/v2/models/other/ready", 10) == [200] * 10
    wait_until(lambda: len(workers(server)) == 2 and killed not in workers(server), 30, "restart")
    wait_until(lambda: all(serving(server, pid) for pid in workers(server)), 60, "new one ready")
    assert fresh_answers(server, INFER, 30) == [404] * 30
    # The killed worker's metric files are folded into the archives at a scrape: gone, and
    # what it counted still counted (the scrapes since count too).
    left = lambda: list((tmp_path / "workers" / "metrics").glob(f"*_{killed}.db"))  # noqa: E731
    wait_until(lambda: requests_counted(server) >= counted + 40 and not left(), 10, "folded")

    load = httpx.post(f"{server.url}/v2/repository/models/tiny/load", timeout=90)
    assert load.status_code == 200, load.text
    assert fresh_answers(server, INFER, 30) == [200] * 30
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=10).json()
    assert {(r["name"], r["state"]) for r in index} == {("tiny", "READY"), ("other", "READY")}


def test_a_worker_restarted_while_a_served_versions_files_are_bad_serves_what_the_other_does(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Both workers keep serving a version whose files went bad on disk; one restarted after
    that loaded what the disk held and answered 503 (or an older version): the workers' copy
    of what each version loaded (WORKERS_DIR/last-good) makes it serve what the other does,
    with the config override of the load in force (it took batches the other refused)."""
    override = {"parameters": {"config": json.dumps({"max_batch_size": 2})}}
    loaded = httpx.post(f"{server.url}/v2/repository/models/tiny/load", json=override, timeout=90)
    assert loaded.status_code == 200, loaded.text
    model = tmp_path / "models" / "tiny" / "1" / "model.onnx"
    model.write_bytes(b"not a model")  # the card's sha256 no longer matches
    noticed = "tiny v1 changed on disk and fails"
    wait_until(lambda: server.log.count(noticed) >= 2, 30, "both workers polled")
    killed = workers(server)[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len(workers(server)) == 2 and killed not in workers(server), 30, "restart")
    wait_until(lambda: all(serving(server, pid) for pid in workers(server)), 60, "new one ready")
    assert fresh_answers(server, INFER, 30) == [200] * 30
    four = {"inputs": [{**BODY["inputs"][0], "shape": [4, 32, 32, 3],  # type: ignore[dict-item]
                        "data": np.tile(IMAGE.ravel(), 4).tolist()}]}  # fmt: skip
    refused = set()
    for _ in range(20):  # fresh connections: both workers
        with httpx.Client(base_url=server.url, timeout=10) as client:
            refused.add(client.post(INFER, json=four).status_code)
    assert refused == {413}, refused
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=10).json()
    (tiny,) = [r for r in index if r["name"] == "tiny"]
    assert tiny["state"] == "READY" and "changed on disk" in tiny["reason"]


def test_metrics_and_statistics_add_up_every_worker(server: ServerProcess) -> None:
    sent = 40
    assert fresh_answers(server, INFER, sent) == [200] * sent
    pattern = re.compile(
        r'^http_requests_total\{[^}]*endpoint="/v2/models/\{name\}/infer"[^}]*\} (\S+)$'
    )

    def counted() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))

    assert counted() == sent  # both workers' counters, summed (each alone has a share)
    images = re.compile(r'^images_classified_total\{model="tiny",version="1"\} (\S+)$', re.M)
    assert sum(map(float, images.findall(httpx.get(f"{server.url}/metrics").text))) == sent

    def inferences() -> int:
        stats = httpx.get(f"{server.url}/v2/models/tiny/stats", timeout=10).json()
        return int(stats["model_stats"][0]["inference_count"])

    # The other worker's share is at most STATISTICS_INTERVAL_S old.
    wait_until(lambda: inferences() == sent, 10, lambda: f"{inferences()} of {sent} counted")
    # Triton's names read the same statistics, so they add both workers up too (the worker that
    # answers the scrape may be the other one: its view of this one's share is as old, too).
    success = re.compile(r'^nv_inference_request_success\{model="tiny",version="1"\} (\S+)$', re.M)

    def triton() -> list[float]:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return [float(v) for v in success.findall(text)]

    wait_until(lambda: triton() == [sent], 10, lambda: f"nv_inference_request_success {triton()}")


def test_both_workers_serve_grpc_on_the_one_port_and_its_repository_calls_hold_in_both(
    server: ServerProcess,
) -> None:
    assert all(serving(server, pid) for pid in workers(server))
    for _ in range(10):  # new channels, new connections
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        try:
            assert client.is_model_ready("tiny")
        finally:
            client.close()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        client.unload_model("other")
    finally:
        client.close()
    assert fresh_answers(server, "/v2/models/other/ready", 20) == [404] * 20


def test_the_quality_metrics_add_up_every_worker_whichever_answers_the_scrape(
    tmp_path: Path,
) -> None:
    """Each worker counts the predictions it logged; a scrape reads both workers' sums, not the
    share of the worker that answered it (Prometheus saw those as counter resets)."""
    sent = 40
    env = {"PREDICTION_LOG": "true", "DATA_DIR": str(tmp_path / "data")}
    with two_workers(tmp_path, **env) as server:
        assert fresh_answers(server, INFER, sent) == [200] * sent
        classes = re.compile(r'^model_predicted_class_total\{[^}]*model="tiny"[^}]*\} (\S+)$', re.M)
        top1 = re.compile(r'^model_top1_probability_count\{[^}]*model="tiny"[^}]*\} (\S+)$', re.M)

        def scraped() -> list[tuple[float, float]]:
            """(predicted classes, top-1 probabilities) counted, by 10 scrapes on connections
            of their own (the kernel spreads them over both workers)."""
            counts = []
            for _ in range(10):
                with httpx.Client(base_url=server.url, timeout=10) as client:
                    text = client.get("/metrics").text
                counts.append(
                    (sum(map(float, classes.findall(text))), sum(map(float, top1.findall(text))))
                )
            return counts

        # the log's writer threads count a batch once it is written (within a second)
        wait_until(lambda: scraped() == [(sent, sent)] * 10, 15, lambda: f"counted {scraped()}")
