"""``bench asgi-cost`` and ``bench pinned-pair``: the arithmetic their reports rest on (the
percentiles, the layer costs from entries outside in, the builds' parsing and summary)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from bench.asgi_cost import cache_eviction, layer_costs, summary_us, timed
from bench.pinned_pair import Build, summary


def test_summary_is_the_median_and_the_nearest_rank_99th_percentile_in_us() -> None:
    seconds = [i / 1e6 for i in range(1, 101)]  # 1..100 us
    assert summary_us(seconds) == pytest.approx((50.5, 99.0))
    assert summary_us([3e-6]) == pytest.approx((3.0, 3.0))


def test_each_layer_costs_what_its_entry_adds_over_the_next_one_in() -> None:
    rows = [("app", 400.0), ("middleware", 390.0), ("answer", 360.0), ("run", 120.0)]
    assert layer_costs(rows) == [
        ("app", 10.0),
        ("middleware", 30.0),
        ("answer", 240.0),
        ("run", 120.0),  # the innermost keeps its whole time
    ]
    assert sum(cost for _, cost in layer_costs(rows)) == pytest.approx(400.0)


def test_cold_calls_run_the_eviction_ahead_of_each_call_and_outside_its_time() -> None:
    events: list[str] = []

    async def call() -> object:
        events.append("call")
        return None

    def evict() -> object:
        events.append("evict")
        return asyncio.run  # anything: its result is not used

    seconds = asyncio.run(timed(call, 3, evict))
    assert events == ["evict", "call"] * 3 and len(seconds) == 3
    assert asyncio.run(timed(call, 2)) and events[-2:] == ["call", "call"]  # warm: none
    assert cache_eviction(8 * 1024)() == 1024.0  # it reads every element of its buffer


def test_a_build_is_a_checkout_and_its_environment() -> None:
    build = Build.parse("inline=.:INLINE_RUN_MAX_US=250,GRPC=0")
    assert (build.name, build.checkout) == ("inline", Path(".").resolve())
    assert build.env == {"INLINE_RUN_MAX_US": "250", "GRPC": "0"}
    assert Build.parse("before=../wt-base").env == {}
    with pytest.raises(argparse.ArgumentTypeError):
        Build.parse("no-checkout")


def test_the_summary_gives_every_round_and_the_median_per_build() -> None:
    rounds = [
        {"build": "a", "1": {"p50_ms": p50}, "64": {"requests_per_s": rate, "p99_ms": p99}}
        for p50, rate, p99 in ((0.5, 2000, 40), (0.7, 2400, 30), (0.6, 2200, 35))
    ] + [{"build": "b", "1": {"p50_ms": 0.4}, "64": {"requests_per_s": 2500, "p99_ms": 31}}]
    lines = summary(rounds, [1, 64])
    assert "0.5, 0.7, 0.6  (median 0.6)" in lines[0]
    assert "2000, 2400, 2200  (median 2200)" in lines[1]
    assert "p99_ms" in lines[2] and "40, 30, 35  (median 35)" in lines[2]
    assert lines[3].startswith("b") and "(median 0.4)" in lines[3]
