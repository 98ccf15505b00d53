"""Triton's statistics, model configuration, schedule-policy ``timeout``, cancellation and
response cache, driven by the real ``tritonclient`` (HTTP and gRPC) against a real server.

docs/api.md's client table names these tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.apps import ADMIN, make_settings
from tests.support.models import make_model_repo, tiny_reference
from tests.support.servers import Running, running_server, wait_until
from tests.support.slow_models import write_slow_model

BATCH = {"max_batch_size": 8, "max_batch_delay_ms": 2.0, "max_queue_images": 100}
SLOW_START_S = 0.4  # time for the slow request to reach its model before the next is sent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``tiny`` (statistics, config), ``cached`` (the response cache), ``spare`` (hostile input)
    and ``slow`` (a run of about 1.5 s on this machine, for timeouts and cancellation: a second
    request is sent 0.4 s into it, and a client leaves 0.2 s after that)."""
    root = tmp_path_factory.mktemp("extensions")
    repo = make_model_repo(root, {"tiny": [1], "cached": [1], "spare": [1]}, lecture=False)
    write_slow_model(repo, "slow", seconds=1.5)  # the server runs it with one thread too
    settings = make_settings(
        repo, intra_op_threads=1, response_cache="cached", poll_interval_s=0, **BATCH
    )
    with running_server(settings) as running:
        yield running


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def http_infer(server: Running, model: str, pixels: np.ndarray, **options: Any) -> np.ndarray:
    client = triton_http.InferenceServerClient(server.address, network_timeout=120)
    try:
        tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        result = client.infer(model, [tensor], **options)
        return np.asarray(result.as_numpy("probabilities"))
    finally:
        client.close()


def grpc_input(pixels: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def grpc_infer(server: Running, model: str, pixels: np.ndarray, **options: Any) -> np.ndarray:
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(model, [grpc_input(pixels)], **options)
        return np.asarray(result.as_numpy("probabilities"))


def stats(server: Running, model: str) -> dict[str, Any]:
    """The served version's statistics over REST, as tritonclient's HTTP client returns them."""
    client = triton_http.InferenceServerClient(server.address)
    try:
        answer: dict[str, Any] = client.get_inference_statistics(model)
    finally:
        client.close()
    (version_stats,) = answer["model_stats"]
    return version_stats


def counts(version_stats: dict[str, Any]) -> dict[str, int]:
    inference = version_stats["inference_stats"]
    return {
        "success": inference["success"]["count"],
        "fail": inference["fail"]["count"],
        "hit": inference["cache_hit"]["count"],
        "miss": inference["cache_miss"]["count"],
        "inferences": version_stats["inference_count"],
        "executions": version_stats["execution_count"],
    }


def metric(server: Running, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1 :] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_statistics_count_exactly_the_requests_sent(server: Running) -> None:
    sizes = [1, 3, 2, 5]
    for i, size in enumerate(sizes):
        got = http_infer(server, "tiny", images(size, i), timeout=10_000_000)
        np.testing.assert_allclose(got, tiny_reference(images(size, i)), atol=1e-5)
    for i, size in enumerate(sizes):
        grpc_infer(server, "tiny", images(size, 10 + i))
    rest = stats(server, "tiny")
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        message = client.get_inference_statistics("tiny").model_stats
    assert json_format.ParseDict(rest, service_pb2.ModelStatistics()) == message[0], "REST != gRPC"
    assert rest["name"] == "tiny" and rest["version"] == "1"
    requests, rows = 2 * len(sizes), 2 * sum(sizes)
    inference = rest["inference_stats"]
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] == requests, key
        assert inference[key]["ns"] > 0 or key == "compute_input", key
    assert inference["fail"]["count"] == 0 and inference["cache_hit"]["count"] == 0
    assert rest["inference_count"] == rows
    assert 1 <= rest["execution_count"] <= requests
    batches = rest["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == rest["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == rows
    assert abs(rest["last_inference"] - time.time() * 1000) < 60_000
    assert "statistics" in httpx.get(f"{server.url}/v2").json()["extensions"]
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        assert "statistics" in client.get_server_metadata().extensions
    every = httpx.get(f"{server.url}/v2/models/stats").json()["model_stats"]
    assert sorted(s["name"] for s in every) == ["cached", "slow", "spare", "tiny"]
    one = httpx.get(f"{server.url}/v2/models/tiny/versions/1/stats").json()["model_stats"]
    assert one == [rest]


def test_tritons_metric_names_say_what_the_statistics_say(server: Running) -> None:
    """Dashboards written for Triton read /metrics under its names: the same counts."""
    http_infer(server, "tiny", images(3, 40))
    version_stats, labels = stats(server, "tiny"), {"model": "tiny", "version": "1"}
    inference = version_stats["inference_stats"]
    expected = {
        "nv_inference_request_success": inference["success"]["count"],
        "nv_inference_count": version_stats["inference_count"],
        "nv_inference_exec_count": version_stats["execution_count"],
        "nv_inference_request_duration_us": inference["success"]["ns"] // 1000,
        "nv_inference_queue_duration_us": inference["queue"]["ns"] // 1000,
        "nv_inference_compute_infer_duration_us": inference["compute_infer"]["ns"] // 1000,
        "nv_inference_pending_request_count": 0,
    }
    assert expected["nv_inference_request_success"] >= 1
    assert {name: metric(server, name, **labels) for name in expected} == expected
    text = httpx.get(f"{server.url}/metrics").text
    assert "nv_inference_request_success_total" not in text  # Triton's exact names
    host = dict(line.split() for line in text.splitlines() if line.startswith("nv_cpu_"))
    assert 0 < float(host["nv_cpu_memory_used_bytes"]) < float(host["nv_cpu_memory_total_bytes"])
    assert 0 <= float(host["nv_cpu_utilization"]) <= 1
    assert 'nv_cache_num_hits_per_model{model="tiny"' not in text  # its cache is off


def test_model_config_is_one_value_over_rest_and_grpc(server: Running) -> None:
    client = triton_http.InferenceServerClient(server.address)
    try:
        rest = client.get_model_config("tiny")
    finally:
        client.close()
    with triton_grpc.InferenceServerClient(server.grpc_url) as grpc_client:
        config = grpc_client.get_model_config("tiny").config
    assert json_format.ParseDict(rest, model_config_pb2.ModelConfig()) == config
    assert rest == httpx.get(f"{server.url}/v2/models/tiny/versions/1/config").json()
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [BATCH["max_batch_size"]]
    assert batching.max_queue_delay_microseconds == BATCH["max_batch_delay_ms"] * 1000
    assert batching.default_queue_policy.max_queue_size == BATCH["max_queue_images"]
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [32, 32, 3])]
    assert rest["input"][0]["data_type"] == "TYPE_UINT8"
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert not config.response_cache.enable
    cached = httpx.get(f"{server.url}/v2/models/cached/config").json()
    assert cached["response_cache"] == {"enable": True}


def _behind_slow_run(server: Running, second: Callable[[], None]) -> tuple[dict[str, int], float]:
    """Start a slow request, call ``second`` while it runs; the statistics' change once both
    are done, and how long the first took."""
    before = counts(stats(server, "slow"))
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        first = pool.submit(http_infer, server, "slow", images(2, 99))
        time.sleep(SLOW_START_S)
        second()
        first.result(timeout=120)
        slow_s = time.perf_counter() - start

    def changed() -> dict[str, int]:
        now = counts(stats(server, "slow"))
        return {k: now[k] - before[k] for k in now}

    wait_until(lambda: changed()["fail"] >= 1, 10, "the dropped request being counted")
    return changed(), slow_s


def canceled(server: Running) -> float:
    return metric(server, "nv_inference_request_failure", model="slow", version="1",
                  reason="CANCELED")  # fmt: skip


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_timeout_fires_on_a_request_queued_behind_a_slow_batch(server: Running, wire: str) -> None:
    answered: list[float] = []
    errors: list[str] = []

    def queued() -> None:
        start = time.perf_counter()
        try:
            infer = http_infer if wire == "http" else grpc_infer
            infer(server, "slow", images(3, 7), timeout=100_000)  # 0.1 s, in microseconds
        except InferenceServerException as exc:
            errors.append(f"{exc.status()} {exc.message()}")
        answered.append(time.perf_counter() - start)

    dropped = metric(server, "inference_requests_dropped_total", model="slow", version="1",
                     reason="timeout")  # fmt: skip
    change, slow_s = _behind_slow_run(server, queued)
    assert len(errors) == 1 and "Request timeout expired" in errors[0], errors
    assert errors[0].split()[0] in ("503", "StatusCode.UNAVAILABLE"), errors
    assert answered[0] < slow_s - SLOW_START_S, "answered when its time was up, not after"
    assert change == {"success": 1, "fail": 1, "hit": 0, "miss": 0, "inferences": 2,
                      "executions": 1}, "the timed-out request never ran"  # fmt: skip
    after = metric(server, "inference_requests_dropped_total", model="slow", version="1",
                   reason="timeout")  # fmt: skip
    assert after == dropped + 1
    rejected = metric(server, "nv_inference_request_failure", model="slow", version="1",
                      reason="REJECTED")  # fmt: skip
    assert rejected == counts(stats(server, "slow"))["fail"] - canceled(server)


def test_a_cancelled_grpc_call_never_runs(server: Running) -> None:
    done = threading.Event()
    outcome: list[Any] = []

    def cancelled() -> None:
        client = triton_grpc.InferenceServerClient(server.grpc_url)

        def callback(result: Any, error: Any) -> None:
            outcome.append(error)
            done.set()

        call = client.async_infer("slow", [grpc_input(images(4, 5))], callback)
        time.sleep(0.1)
        call.cancel()
        assert done.wait(10)
        client.close()

    change, _ = _behind_slow_run(server, cancelled)
    assert change["inferences"] == 2 and change["executions"] == 1, "the cancelled call ran"
    assert change["success"] == 1 and change["fail"] == 1
    assert outcome and outcome[0] is not None  # tritonclient reports the cancellation
    assert metric(server, "inference_requests_dropped_total", model="slow", version="1",
                  reason="cancelled") >= 1  # fmt: skip
    assert canceled(server) >= 1  # Triton's reason for it


def test_a_rest_client_that_leaves_while_queued_is_dropped(server: Running) -> None:
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                        "data": [0] * 3072}]}  # fmt: skip

    def leaves() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=0.2)

    change, _ = _behind_slow_run(server, leaves)
    assert change["inferences"] == 2 and change["executions"] == 1, "the abandoned request ran"
    assert change["fail"] == 1


def test_response_cache_hits_are_counted_and_a_reload_empties_it(server: Running) -> None:
    pixels = images(4, 3)
    first = http_infer(server, "cached", pixels)
    again = http_infer(server, "cached", pixels)
    over_grpc = grpc_infer(server, "cached", pixels)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, over_grpc)
    assert counts(stats(server, "cached")) == {
        "success": 3, "fail": 0, "hit": 2, "miss": 1, "inferences": 4, "executions": 1
    }  # fmt: skip
    assert metric(server, "response_cache_lookups_total", model="cached", version="1",
                  result="hit") == 2  # fmt: skip
    assert metric(server, "nv_cache_num_hits_per_model", model="cached", version="1") == 2
    assert metric(server, "nv_cache_num_misses_per_model", model="cached", version="1") == 1
    client = triton_http.InferenceServerClient(server.address, verbose=False)
    try:
        client.load_model("cached", headers=ADMIN)
    finally:
        client.close()
    assert metric(server, "response_cache_bytes", model="cached") == 0
    http_infer(server, "cached", pixels)
    after = counts(stats(server, "cached"))
    assert after["miss"] == 2 and after["hit"] == 2, "a reload empties the cache"
    other = http_infer(server, "cached", images(4, 4))
    np.testing.assert_allclose(other, tiny_reference(images(4, 4)), atol=1e-5)
    big = images(64, 8)  # 196,608 bytes: hashed off the event loop
    np.testing.assert_array_equal(
        http_infer(server, "cached", big), grpc_infer(server, "cached", big)
    )
    final = counts(stats(server, "cached"))
    assert final["hit"] == after["hit"] + 1 and final["miss"] == after["miss"] + 2


HOSTILE_TIMEOUTS = [-1, 1.5, "10", True, 10**20, None, {"a": 1}]


@pytest.mark.parametrize("value", HOSTILE_TIMEOUTS, ids=repr)
def test_hostile_rest_timeouts_are_400(server: Running, value: Any) -> None:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
    body = {"parameters": {"timeout": value}, "inputs": [tensor]}
    answer = httpx.post(f"{server.url}/v2/models/spare/infer", json=body)
    assert answer.status_code == 400, answer.text
    assert "timeout" in answer.json()["error"]
    assert http_infer(server, "spare", images(1)).shape == (1, 10)  # still serving


@pytest.mark.parametrize(
    "parameter",
    [
        {"int64_param": -5},
        {"string_param": "1000"},
        {"double_param": 0.5},
        {"int64_param": 2**62},
        {"bool_param": True},
    ],
    ids=str,
)
def test_hostile_grpc_timeouts_are_invalid_argument(
    server: Running, parameter: dict[str, Any]
) -> None:
    pixels = images(1)
    request = service_pb2.ModelInferRequest(model_name="spare")
    request.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    request.parameters["timeout"].CopyFrom(service_pb2.InferParameter(**parameter))
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout" in str(raised.value.details())
    assert grpc_infer(server, "spare", pixels).shape == (1, 10)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope/stats",
        "/v2/models/tiny/versions/9/stats",
        "/v2/models/tiny/versions/x/stats",
        "/v2/models/nope/config",
        "/v2/models/tiny/versions/0/config",
    ],
)
def test_statistics_and_config_of_what_is_not_served_are_404(server: Running, path: str) -> None:
    answer = httpx.get(f"{server.url}{path}")
    assert answer.status_code == 404 and "error" in answer.json()


@pytest.mark.parametrize(
    ("name", "version", "status"),
    [("nope", "", "NOT_FOUND"), ("tiny", "7", "NOT_FOUND"), ("", "1", "INVALID_ARGUMENT")],
)
def test_grpc_statistics_of_what_is_not_served_is_an_error(
    server: Running, name: str, version: str, status: str
) -> None:
    with (
        triton_grpc.InferenceServerClient(server.grpc_url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.get_inference_statistics(name, version)
    assert raised.value.status() == f"StatusCode.{status}"
