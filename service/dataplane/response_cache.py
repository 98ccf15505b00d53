"""Triton's response cache: a model that opts in (``RESPONSE_CACHE``) answers a request it has
answered before from memory. The key is the version, the outputs asked for and a digest of the
model's input batch; each model has its own byte budget, least recently used entries go first.

An entry belongs to the runtime that computed it, so after a reload (even of the same version
number) it is never served again; a load or unload through the repository API also empties the
model's entries. Hits and misses go into the version's statistics and Prometheus.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.core.errors import InvalidConfig
from service.engine.runtime import ModelRuntime
from service.engine.statistics import InferenceStatistics
from service.engine.work_pool import WorkPool

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
# What an entry holds beside its outputs' bytes (its key, dict, arrays' headers, the LRU's
# link: about 850 bytes measured), counted against the budget too: counting the outputs alone
# (80 bytes for the lecture model's two) let a 64 MiB budget keep 840,000 entries, 680 MiB.
ENTRY_OVERHEAD_BYTES = 1024
Outputs = dict[str, np.ndarray]
Key = tuple[int, tuple[str, ...], tuple[int, ...], str, bytes]


def parse_budgets(setting: str) -> dict[str, int]:
    """``RESPONSE_CACHE``: comma-separated ``NAME`` or ``NAME=BYTES``, as {model: byte budget}."""
    budgets: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in setting.split(","))):
        name, _, size = entry.partition("=")
        name, size = name.strip(), size.strip()
        if not name or (size and not (size.isascii() and size.isdigit() and int(size) > 0)):
            raise InvalidConfig(
                f"RESPONSE_CACHE entry {entry!r}: expected NAME or NAME=BYTES (a positive integer)"
            )
        budgets[name] = int(size) if size else DEFAULT_BUDGET_BYTES
    return budgets


@dataclass
class _Entry:
    owner: InferenceStatistics  # the runtime's own: another runtime's entries are stale
    outputs: Outputs
    nbytes: int


class _ModelCache:
    """One model's entries, least recently used first, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.nbytes = 0

    def get(self, key: Key, owner: InferenceStatistics) -> Outputs | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.owner is not owner:  # computed by a version since replaced
            self._remove(key)
            return None
        self.entries.move_to_end(key)
        return entry.outputs

    def put(self, key: Key, entry: _Entry) -> None:
        if entry.nbytes > self.budget:
            return  # would evict everything and still not fit
        if key in self.entries:
            self._remove(key)
        while self.nbytes + entry.nbytes > self.budget:
            self._remove(next(iter(self.entries)))
        self.entries[key] = entry
        self.nbytes += entry.nbytes

    def _remove(self, key: Key) -> None:
        self.nbytes -= self.entries.pop(key).nbytes


class ResponseCache:
    """The opted-in models' caches; used on the event loop (a lock guards threads anyway)."""

    def __init__(self, setting: str, registry: CollectorRegistry) -> None:
        self._models = {name: _ModelCache(b) for name, b in parse_budgets(setting).items()}
        self._lock = threading.Lock()
        self.lookups = Counter(
            "response_cache_lookups",
            "Response cache lookups by model, version and result (hit or miss).",
            ["model", "version", "result"],
            registry=registry,
        )
        self.size = Gauge(
            "response_cache_bytes",
            "Bytes the response cache holds per model, outputs and their keeping (RESPONSE_CACHE).",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",  # WORKERS > 1: each worker's cache, added up
        )

    def enabled(self, name: str) -> bool:
        return name in self._models

    def budget(self, name: str) -> int:
        cache = self._models.get(name)
        return cache.budget if cache else 0

    @staticmethod
    def key(runtime: ModelRuntime, pixels: np.ndarray, outputs: Sequence[str]) -> Key:
        """The version, the outputs asked for, and the input batch (shape, dtype, a digest)."""
        digest = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()
        return (runtime.version, tuple(outputs), pixels.shape, pixels.dtype.str, digest)

    def get(self, runtime: ModelRuntime, key: Key, started: float) -> Outputs | None:
        """The cached answer, or None; a hit is counted here, a miss once ``put`` stored it."""
        with self._lock:
            found = self._models[runtime.name].get(key, runtime.statistics)
        if found is not None:
            runtime.statistics.record_cache(True, int((time.perf_counter() - started) * 1e9))
            self.lookups.labels(runtime.name, str(runtime.version), "hit").inc()
        return found

    async def answer(
        self,
        runtime: ModelRuntime,
        pixels: np.ndarray,
        outputs: Sequence[str],
        compute: Callable[[], Awaitable[Outputs]],
        work: WorkPool,
        inline_bytes: int,
    ) -> Outputs:
        """The cached answer for this input, else ``compute()``'s, kept for next time. Inputs
        over ``inline_bytes`` are hashed on ``work``'s threads, off the event loop."""
        started = time.perf_counter()
        light = pixels.nbytes <= inline_bytes
        key = await work.run_here_if_light(light, self.key, runtime, pixels, outputs)
        found = self.get(runtime, key, started)
        if found is not None:
            return found
        lookup_ns = int((time.perf_counter() - started) * 1e9)
        result = await compute()
        self.put(runtime, key, result, lookup_ns)
        return result

    def put(self, runtime: ModelRuntime, key: Key, outputs: Outputs, lookup_ns: int) -> None:
        """Keep a copy of ``outputs`` (a batch's slices would hold the whole batch's arrays) and
        count the miss with its lookup and insert times."""
        started = time.perf_counter()
        kept = {name: array.copy() for name, array in outputs.items()}
        for array in kept.values():
            array.flags.writeable = False
        nbytes = ENTRY_OVERHEAD_BYTES + sum(a.nbytes for a in kept.values())
        entry = _Entry(runtime.statistics, kept, nbytes)
        cache = self._models[runtime.name]
        with self._lock:
            cache.put(key, entry)
            self.size.labels(runtime.name).set(cache.nbytes)
        spent = lookup_ns + int((time.perf_counter() - started) * 1e9)
        runtime.statistics.record_cache(False, spent)
        self.lookups.labels(runtime.name, str(runtime.version), "miss").inc()

    def drop(self, name: str) -> None:
        """Forget every entry of a model (its versions changed)."""
        cache = self._models.get(name)
        if cache is None:
            return
        with self._lock:
            cache.entries.clear()
            cache.nbytes = 0
            self.size.labels(name).set(0)
