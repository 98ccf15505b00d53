"""The response cache's bookkeeping: budgets, least-recently-used eviction, stale entries."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.core.errors import InvalidConfig
from service.dataplane.response_cache import (
    DEFAULT_BUDGET_BYTES,
    ENTRY_OVERHEAD_BYTES,
    ResponseCache,
    _Entry,
    _ModelCache,
    parse_budgets,
)
from service.engine.statistics import InferenceStatistics


def entry(owner: InferenceStatistics, nbytes: int) -> _Entry:
    return _Entry(owner, {"out": np.zeros(nbytes, dtype=np.uint8)}, nbytes)


def key(n: int) -> tuple[int, tuple[str, ...], tuple[int, ...], str, bytes]:
    return (1, (), (n,), "|u1", bytes([n]))


def test_budgets_are_read_from_the_setting() -> None:
    assert parse_budgets("") == {}
    assert parse_budgets(" a , b=1000") == {"a": DEFAULT_BUDGET_BYTES, "b": 1000}


@pytest.mark.parametrize("setting", ["a=0", "a=-1", "a=1e6", "=5", "a=x", "a=١"])
def test_a_bad_budget_is_refused(setting: str) -> None:
    with pytest.raises(InvalidConfig, match="RESPONSE_CACHE"):
        ResponseCache(setting, CollectorRegistry())


def test_the_least_recently_used_entries_go_first_within_the_budget() -> None:
    owner = InferenceStatistics()
    cache = _ModelCache(budget=300)
    for n in range(3):
        cache.put(key(n), entry(owner, 100))
    assert cache.get(key(0), owner) is not None  # 0 is now the most recent
    cache.put(key(3), entry(owner, 100))
    assert cache.get(key(1), owner) is None and cache.get(key(0), owner) is not None
    assert cache.nbytes == 300
    cache.put(key(4), entry(owner, 301))  # larger than the budget: not kept, nothing evicted
    assert cache.get(key(4), owner) is None and cache.nbytes == 300


def test_an_entry_of_a_replaced_runtime_is_never_served() -> None:
    old, new = InferenceStatistics(), InferenceStatistics()
    cache = _ModelCache(budget=1000)
    cache.put(key(1), entry(old, 10))
    assert cache.get(key(1), new) is None
    assert cache.nbytes == 0 and not cache.entries


def test_each_entry_counts_its_keeping_as_well_as_its_outputs() -> None:
    """80 bytes of outputs hold about 850 bytes in all: counting the outputs alone let a 64 MiB
    budget keep 840,000 entries (680 MiB)."""
    budget = 10 * ENTRY_OVERHEAD_BYTES
    cache = ResponseCache(f"tiny={budget}", CollectorRegistry())
    runtime: Any = SimpleNamespace(name="tiny", version=1, statistics=InferenceStatistics())
    logits = np.zeros((1, 10), np.float32)
    for n in range(20):
        cache.put(runtime, key(n), {"logits": logits, "probabilities": logits}, 0)
    found = [cache.get(runtime, key(n), 0.0) for n in range(20)]
    assert sum(f is not None for f in found) == budget // (ENTRY_OVERHEAD_BYTES + 80)
