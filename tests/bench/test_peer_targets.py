"""``bench.peer_targets`` and its block: the issue's targets judged on each placement's figures,
the pinned verdict first with the limits measured on the same core, the shared one beside it."""

from __future__ import annotations

from typing import Any

from bench.blocks_peers import peer_targets, peers
from bench.peer_targets import judge
from bench.peer_workloads import WORKLOADS


def _load(rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"requests_per_s": rps, "images_per_s": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0}


def _mode(ours_64: float, ours_p50: float, threads: int) -> dict[str, Any]:
    """One placement's figures: the lecture model at 64 clients ``ours_64`` req/s against the
    peer's 1,000, one client at p50 ``ours_p50`` ms, bn at 700 images/s."""
    loads = [
        (_load(150, 6.0, 7.0), _load(2000, ours_p50, 1.0)),
        (_load(1000, 60.0, 80.0), _load(ours_64, 20.0, 30.0)),
        (_load(500, 100.0, 150.0), _load(700, 80.0, 120.0)),
    ]
    workloads = [
        {"label": w.label, "clients": w.clients, "peer": p, "ours": o,
         "rps_ratio": o["requests_per_s"] / p["requests_per_s"],
         "p99_ratio": o["p99_ms"] / p["p99_ms"],
         "of_ceiling": 0.5, "peer_of_ceiling": 0.3}
        for w, (p, o) in zip(WORKLOADS, loads, strict=True)
    ]  # fmt: skip
    ceilings = [{"model": "cifar10_cnn_bn", "batch": 32, "threads": t, "cpus": "any",
                 "images_per_s": 800.0 * t} for t in sorted({threads, 2})]  # fmt: skip
    ceilings.append({"model": "cifar10_cnn", "batch": 32, "threads": threads, "cpus": "any",
                     "images_per_s": 10_000.0})  # fmt: skip
    asgi = [{"app": "x", "no_model": n, "clients": c, **_load(3000 if n else 2500, 0.3, 40.0)}
            for n in (False, True) for c in (1, 64)]  # fmt: skip
    protocols = {"rest_binary_p50_ms": 0.6, "grpc_p50_ms": 0.9, "grpc_ratio": 1.5,
                 "blocking_p50_ms": 0.5, "blocking_ratio": 0.83}  # fmt: skip
    return {
        "server_cpus": "0" if threads == 1 else None, "client_cpus": "1" if threads == 1 else None,
        "threads": threads, "peer_threads": 1, "workloads": workloads, "ceilings": ceilings,
        "asgi": asgi, "protocols": protocols,
        "affinity": {"ours": {"processes": 1, "threads": 9, "cpus": ["0"]},
                     "peer": [{"model": "m", "processes": 3, "threads": 40, "cpus": ["0"]}]},
    }  # fmt: skip


def test_each_target_is_met_or_not_on_its_own_placements_figures() -> None:
    judged = judge({"shared": _mode(1500, 0.8, 2), "pinned": _mode(2100, 0.45, 1)})
    pinned = {row["target"].split(":")[0]: row["met"] for row in judged["pinned"]}
    assert [row["met"] for row in judged["pinned"]] == [True, True, True, False, True, True]
    assert [row["met"] for row in judged["shared"]] == [False, True, False, False, True, True]
    assert pinned["one client (lecture model, 1-image FP32 JSON)"]
    bn = judged["pinned"][3]
    assert bn["measured"].startswith("44% (700 of 1,600")  # of 2 threads in process
    assert (
        "800 images/s, 50% of 2 threads: under 80% with no server around it, so out of reach"
        " on one core; the service reaches 88% of that" in bn["limit"]
    )
    assert "x3.00 PyTriton" in judged["pinned"][0]["limit"]  # the floor against the peer
    # the floor's 1/3,000 s a request plus the model's 1/10,000 s an image at batch 32
    bound = "batch-32 time per image: 2,308 req/s (x2.31; ours is 91% of it)"
    assert bound in judged["pinned"][0]["limit"]
    above = judge({"shared": _mode(1500, 0.8, 2), "pinned": _mode(2400, 0.45, 1)})["pinned"][0]
    assert (
        "ours is 104% of it: above it, so that floor is partly the load generator's"
        in (above["limit"])
    )


def test_the_targets_block_puts_the_pinned_verdict_first_and_the_shared_beside_it() -> None:
    results: dict[str, Any] = {
        "modes": {"shared": _mode(1500, 0.8, 2), "pinned": _mode(2100, 0.45, 1)}
    }
    results["targets"] = judge(results["modes"])
    record = {"time": "t", "command": "python -m bench peers", "results": results}
    table = peer_targets(record).splitlines()
    assert table[0].startswith("| target | pinned | met (pinned) | shared |")
    assert "| x2.10 (2,100 against 1,000 req/s) | met | x1.50" in table[2]
    assert "| p50 0.45 ms | met | p50 0.80 ms (not met) |" in table[4]
    assert "| **not met** |" in table[5]
    run = {"machine": "m", "seconds": 3, "peer_threads": 1, "workers": "1", "training": None}
    page = peers({**record, "results": {**results, **run}})
    assert "### Pinned: server on CPU 0, load generator on CPU 1" in page
    assert "this service 1 process(es), 9 threads, CPUs 0" in page


def test_the_grpc_target_shows_its_floor_when_the_run_measured_one() -> None:
    """The gRPC row's limit is grpcio's bare synchronous server against REST binary of the same
    process; a record from before that floor was measured still renders, with no limit."""
    pinned = _mode(2100, 0.45, 1)
    pinned["protocols"] = {"rest_binary_p50_ms": 0.5, "grpc_p50_ms": 1.0, "grpc_ratio": 2.0,
                           "blocking_p50_ms": 0.8, "blocking_ratio": 1.6}  # fmt: skip
    assert judge({"pinned": pinned})["pinned"][-1]["limit"] == ""
    pinned["grpc_limit"] = {"rest_binary_p50_ms": 0.5, "grpc_p50_ms": 0.75, "grpc_ratio": 1.5,
                            "blocking_p50_ms": 0.6, "blocking_ratio": 1.2}  # fmt: skip
    row = judge({"pinned": pinned})["pinned"][-1]
    assert not row["met"]
    assert "(`sync-direct`): p50 x1.20 REST binary's (0.60 against 0.50 ms)" in row["limit"]
    assert "out of reach through grpcio's Python server" in row["limit"]
    pinned["grpc_limit"] |= {"blocking_p50_ms": 0.45, "blocking_ratio": 0.9}
    reachable = judge({"pinned": pinned})["pinned"][-1]["limit"]
    assert "p50 x0.90" in reachable and "out of reach" not in reachable
    results: dict[str, Any] = {"modes": {"pinned": pinned}, "machine": "m", "training": None,
                               "seconds": 3, "peer_threads": 1, "workers": "1"}  # fmt: skip
    results["targets"] = judge(results["modes"])
    page = peers({"time": "t", "command": "python -m bench peers", "results": results})
    assert "gRPC p50 0.75 ms with the grpc.aio client (x1.50), 0.45 ms with the blocking" in page


def test_the_one_client_limit_shows_the_gap_to_the_raw_app_served_beside_it() -> None:
    """One client alternating between the service and the raw app (``bench.alternating``): the
    one-client row's limit and the placement's block give the paired gap; older records render
    without it."""
    pinned = _mode(2100, 0.6, 1)
    before = judge({"pinned": pinned})["pinned"][2]["limit"]
    assert "alternating" not in before
    pinned["alternating"] = {"requests": 6000, "servers": [
        {"name": "service", "p50_ms": 0.71, "gap_us": 0.0, "gap_q1_us": 0.0, "gap_q3_us": 0.0},
        {"name": "raw ASGI app", "p50_ms": 0.55, "gap_us": -170.0, "gap_q1_us": -240.0,
         "gap_q3_us": -120.0},
    ]}  # fmt: skip
    row = judge({"pinned": pinned})["pinned"][2]
    assert not row["met"]
    assert row["limit"].startswith(before)
    assert "(6,000 turns): p50 0.71 against 0.55 ms; the service's latency minus the raw app's " \
        "+170 us" in row["limit"]  # fmt: skip
    results: dict[str, Any] = {"modes": {"pinned": pinned}, "machine": "m", "training": None,
                               "seconds": 3, "peer_threads": 1, "workers": "1"}  # fmt: skip
    results["targets"] = judge(results["modes"])
    page = peers({"time": "t", "command": "python -m bench peers", "results": results})
    assert "median +170 us (quartiles +120 to +240 us)" in page
