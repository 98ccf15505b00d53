"""Triton's metric names, read at scrape time from the statistics extension's counts."""

from __future__ import annotations

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.engine import triton_metrics
from service.engine.statistics import FAILURES, InferenceStatistics, VersionStatistics
from service.engine.triton_metrics import CpuSampler, TritonMetrics


def samples(stats: list[VersionStatistics], cached: set[str]) -> dict[tuple[str, str], float]:
    """Every sample by (name, its labels as text)."""
    registry = CollectorRegistry()
    registry.register(TritonMetrics(lambda: stats, cached.__contains__))
    text = generate_latest(registry).decode()
    return {
        (s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_triton_metric_reads_its_count_in_tritons_units() -> None:
    live = InferenceStatistics()
    live.record_execution(3, 1_000, 2_000_000, 5_000)
    live.record_batch(2, 4_000_000, (1_000, 2_000_000, 5_000), 9_999_999)
    live.record_fail(1, 10, "REJECTED")
    live.record_fail(2, 20, "CANCELED")
    live.record_cache(True, 7_000)
    tiny = live.snapshot("tiny", 1, pending=4)
    other = InferenceStatistics().snapshot("other", 2)
    got = samples([tiny, other], cached={"tiny"})
    t = "model=tiny,version=1"
    assert got[("nv_inference_request_success", t)] == 3  # two run, one from the cache
    assert got[("nv_inference_count", t)] == 3 and got[("nv_inference_exec_count", t)] == 1
    assert got[("nv_inference_request_duration_us", t)] == (9_999_999 + 7_000) // 1000
    assert got[("nv_inference_queue_duration_us", t)] == 4_000
    assert got[("nv_inference_compute_infer_duration_us", t)] == 2 * 2_000  # each request's
    assert got[("nv_inference_compute_output_duration_us", t)] == 2 * 5
    assert got[("nv_inference_pending_request_count", t)] == 4
    failures = {r: got[("nv_inference_request_failure", f"model=tiny,reason={r},version=1")]
                for r in FAILURES}  # fmt: skip
    assert failures == {"REJECTED": 1, "CANCELED": 2, "BACKEND": 0, "OTHER": 0}
    assert got[("nv_cache_num_hits_per_model", t)] == 1
    assert got[("nv_cache_hit_duration_per_model", t)] == 7
    assert ("nv_cache_num_hits_per_model", "model=other,version=2") not in got  # no cache
    assert got[("nv_inference_request_success", "model=other,version=2")] == 0
    assert not any(name.endswith("_total") for name, _ in got)  # Triton's names, exactly
    assert 0 <= got[("nv_cpu_utilization", "")] <= 1
    assert 0 < got[("nv_cpu_memory_used_bytes", "")] < got[("nv_cpu_memory_total_bytes", "")]


def test_cpu_utilization_is_sampled_on_an_interval_not_reset_by_each_scrape() -> None:
    """A client's scrape 50 ms before the operator's does not change what the operator reads:
    within the interval every scrape reads the last sample; past it, one new sample covers the
    whole time since the one before."""
    now = [0.0]
    # cumulative CPU seconds (busy, all) of the host at each read, on a 2-core machine
    times = iter([(0.0, 0.0), (5.0, 20.0), (15.0, 40.0)])
    cpu = CpuSampler(interval_s=10.0, clock=lambda: now[0], read=lambda: next(times))
    registry = CollectorRegistry()
    registry.register(TritonMetrics(lambda: [], lambda _: False, cpu))

    def scrape() -> float:
        text = generate_latest(registry).decode()
        (family,) = [
            f for f in text_string_to_metric_families(text) if f.name == "nv_cpu_utilization"
        ]
        return float(family.samples[0].value)

    now[0] = 10.0
    assert scrape() == 0.25  # 5 of 20 CPU seconds busy since the start
    now[0] = 19.9  # a client scrapes, then the operator 50 ms later: both read the sample
    assert scrape() == 0.25
    now[0] = 19.95
    assert scrape() == 0.25
    now[0] = 25.0  # past the interval: one sample over the 15 s since the last one
    assert scrape() == 0.5  # 10 of 20 CPU seconds busy
    now[0] = 25.05
    assert scrape() == 0.5 and cpu.utilization() == 0.5  # (a fourth read would raise)


def test_guest_time_is_counted_once_as_psutil_counts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux counts a guest's time in user and nice as well; psutil takes it out of the sum."""
    times = psutil._pslinux.scputimes(  # type: ignore[attr-defined]
        user=60.0, nice=0.0, system=0.0, idle=40.0, iowait=0.0, irq=0.0, softirq=0.0,
        steal=0.0, guest=50.0, guest_nice=0.0,
    )  # fmt: skip
    monkeypatch.setattr(psutil, "cpu_times", lambda: times)
    busy, total = triton_metrics.cpu_seconds()
    assert (busy, total) == (60.0, 100.0)
