"""Triton's metric names, read at scrape time from the statistics extension's counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.engine.statistics import FAILURES, InferenceStatistics, VersionStatistics
from service.engine.triton_metrics import TritonMetrics


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
