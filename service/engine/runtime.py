"""A loaded model: one onnxruntime session with its providers, warm-up and ``run()``.

``session.run`` executes on one dedicated thread per model so the event loop stays free;
onnxruntime releases the GIL and parallelises inside a run (``intra_op_threads``). The one
exception is a lone 1-image request to a version measured quick at warm-up, or later on the
batch-1 runs it serves (``inline.py``): it runs on the loop, sparing the thread hop. A
runtime that a newer version replaces is retired: it finishes the requests that hold it, then
closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.card import TENSOR, ModelCard, TensorSpec
from service.core.errors import InvalidCard, ProviderUnavailable, ServingError, TimeoutExpired
from service.core.limits import value_bounds
from service.engine import thread_policy, tracing
from service.engine.batcher import BatchStats, DynamicBatcher, Outputs, Rows, Tagged
from service.engine.dtypes import session_tensors, zeros
from service.engine.inline import ServedRuns, describe, quick_run_p99_s
from service.engine.large_graphs import onnxruntime_session
from service.engine.named_rows import NamedRows
from service.engine.providers import CPU, provider_problem, resolve_providers
from service.engine.statistics import InferenceStatistics

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

BatchObserver = Callable[[str, int, BatchStats], None]  # (model, version, what one run did)
# (model, version, the tagged requests of one run, its outputs, its input): see batcher.Answered
AnswerObserver = Callable[[str, int, Tagged, Outputs, Rows], None]


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built and fed; the repository passes the same options to every model."""

    providers: tuple[str, ...] = ("CUDAExecutionProvider", CPU)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization_level: str = "all"
    warm_up: bool = True
    warm_up_batch_sizes: tuple[int, ...] = (1,)  # one run of zeros per size, before READY
    dynamic_batching: bool = True
    max_batch_size: int = 256
    max_batch_delay_ms: float = 0.0
    max_queue_images: int = 2048
    max_images_per_request: int = 1024  # rows one request may carry (Triton's max_batch_size)
    inline_run_max_us: int = 0  # a lone request runs on the loop under this batch-1 p99 (0: never)
    thread_scheduling: thread_policy.ThreadScheduling = "batch"  # the model's thread's
    require_providers: bool = False  # a session without every requested provider fails to load
    on_batch: BatchObserver | None = field(default=None, compare=False)
    on_answered: AnswerObserver | None = field(default=None, compare=False)


class ModelRuntime:
    """One model version held in an onnxruntime session; safe to share across requests."""

    def __init__(
        self,
        card: ModelCard,
        model_bytes: bytes,
        options: RuntimeOptions,
        data_folder: Path | None = None,
        external: dict[str, bytes] | None = None,
    ) -> None:
        """``external``: the graph's external data files by name, read from ``data_folder``
        (its version folder; ``external_data``), kept for the session's life."""
        self._external = external or {}
        self.card = card
        self.options = options
        sess_options = ort.SessionOptions()
        sess_options.intra_op_num_threads = options.intra_op_threads
        sess_options.inter_op_num_threads = options.inter_op_threads
        sess_options.graph_optimization_level = GRAPH_OPTIMIZATION[options.graph_optimization_level]
        if not options.allow_spinning:  # idle pool threads sleep instead of taking a core
            sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess_options.log_severity_level = 3  # onnxruntime's own warnings would repeat ours
        providers, _ = resolve_providers(options.providers)
        try:
            self.session = onnxruntime_session(
                model_bytes, sess_options, providers, data_folder=data_folder, external=external
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise InvalidCard(f"onnxruntime cannot load the graph: {exc}") from None
        self.providers: list[str] = list(self.session.get_providers())
        # Requested providers the session did not get (onnxruntime falls back without raising).
        self.missing_providers = [p for p in options.providers if p not in self.providers]
        if options.require_providers and self.missing_providers:
            problems = "; ".join(provider_problem(p) for p in self.missing_providers)
            raise ProviderUnavailable(
                f"REQUIRE_PROVIDERS is set and the session runs on {', '.join(self.providers)}: "
                f"{problems}"
            )
        self.inputs = session_tensors(self.session.get_inputs())
        self.outputs = session_tensors(self.session.get_outputs())
        self.output_names = [t.name for t in self.outputs]
        self.kind = card.kind
        # Requests share runs when every tensor has a leading batch axis (an image classifier's
        # always does); otherwise each request is its own run (Triton's max_batch_size 0).
        tensors = [*card.inputs, *card.outputs]
        self.batched = card.kind != TENSOR or all(t.shape[:1] == [-1] for t in tensors)
        self._executor = thread_policy.executor(
            options.thread_scheduling, 1, f"ort-{card.name}-{card.version}"
        )
        self._batcher: DynamicBatcher | None = None  # made on first use, in the serving loop
        self.statistics = InferenceStatistics()  # this version's, since it was loaded
        self._lock = threading.Lock()
        self._users = 0  # requests holding this runtime (see ``acquire``)
        self._in_executor = 0  # unbatched requests handed to the executor and not yet answered
        self.inline_p99_s: float | None = None  # set by ``warm_up`` for a quick enough version
        self._value_bounds: dict[tuple[int, bool], dict[str, int]] = {}  # by (rows, BYTES)
        self._served_runs: ServedRuns | None = None  # judged slow at warm-up: judged again
        self._retired = False
        self.closed = False

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    @property
    def input(self) -> TensorSpec:
        """The image input: ``[N, H, W, C]`` uint8 pixels."""
        return self.card.inputs[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image, from the card's input shape."""
        _, h, w, c = self.input.shape
        return h, w, c

    def run(self, images: Rows, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on a batch (blocking): an image batch, or a tensor model's inputs by
        name; returns every requested output by name."""
        names = list(outputs) if outputs else self.output_names
        feeds = images.arrays if isinstance(images, NamedRows) else {self.input.name: images}
        try:
            results = self.session.run(names, feeds)
        except Exception as exc:
            log.exception("%s v%d: onnxruntime failed on a batch", self.name, self.version)
            raise ServingError(f"inference failed for model {self.name!r}") from exc
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}

    def _run_unbatched(
        self,
        images: Rows,
        enqueued: float,
        timeout_s: float,
        traced: tracing.Queued | None = None,
        *,
        observe_later: bool = False,
    ) -> dict[str, np.ndarray]:
        """One request as one run, without the batcher: timed for the metrics and statistics;
        ``TimeoutExpired`` if it waited for the thread longer than ``timeout_s`` (0: no limit).

        ``observe_later`` (a run inline, on the event loop): the statistics and the metrics hear
        of the run on the loop's next turn, after this request's answer is written and before
        any later request (a statistics call included) is read. Their updates cost a lone
        request 20-30 us otherwise (docs/benchmarks.md, "One client, served side by side")."""
        start = time.perf_counter()
        statistics = self.statistics
        if timeout_s and start - enqueued >= timeout_s:
            statistics.record_fail(1, int((start - enqueued) * 1e9), "REJECTED")
            self._observe(BatchStats(0, 0, 0.0, timed_out=1))
            raise TimeoutExpired(
                f"Request timeout expired: still queued after {int(timeout_s * 1e6)} us"
            )
        try:
            with tracing.batch_span((traced,), len(images)):  # links this request alone
                result = self.run(images)
        except Exception:
            statistics.record_fail(1, int((time.perf_counter() - enqueued) * 1e9), "BACKEND")
            raise
        done = time.perf_counter()
        if observe_later:
            asyncio.get_running_loop().call_soon(self._record, len(images), enqueued, start, done)
        else:
            self._record(len(images), enqueued, start, done)
        return result

    def _record(self, rows: int, enqueued: float, start: float, done: float) -> None:
        """One request's run, as ``_run_unbatched`` timed it, in the statistics and metrics."""
        infer_ns = int((done - start) * 1e9)
        self.statistics.record_execution(rows, 0, infer_ns, 0)
        total_ns = int((done - enqueued) * 1e9)
        self.statistics.record_batch(1, int((start - enqueued) * 1e9), (0, infer_ns, 0), total_ns)
        self._observe(BatchStats(rows, 1, done - start))

    def _observe(self, stats: BatchStats) -> None:
        if stats.rows == 1 and self._served_runs is not None:
            self._judge_again(stats.seconds)
        if self.options.on_batch is not None:
            self.options.on_batch(self.name, self.version, stats)

    async def infer(
        self,
        images: Rows,
        outputs: Sequence[str] | None = None,
        timeout_s: float = 0.0,
        tag: Any = None,
    ) -> dict[str, np.ndarray]:
        """Run validated images on the model's own thread and return their outputs; with a
        ``tag``, ``on_answered`` hears of them with every output of their run.

        With dynamic batching, concurrent calls share runs (``DynamicBatcher``); without it each
        call is one run. Either way the event loop does not wait on onnxruntime, except for a
        lone 1-image request to a version timed quick at warm-up (``inline_p99_s``), run on the
        spot. Still queued after ``timeout_s`` (0: no limit): ``TimeoutExpired``, never run.
        """
        inline = self.inline_p99_s is not None and len(images) == 1 and self._idle()
        if inline:
            # One turn of the loop first: requests already read reach their lookup, take their
            # lease and so send this one to the batcher with them (a busy loop keeps batching).
            await asyncio.sleep(0)
            inline = self._idle()
        if inline:
            now = time.perf_counter()
            result = self._run_unbatched(images, now, 0.0, tracing.queued(), observe_later=True)
        elif self.options.dynamic_batching and self.batched:
            if self._batcher is None:
                self._batcher = DynamicBatcher(
                    self.run,  # every output, on the model's thread
                    max_batch_size=self.options.max_batch_size,
                    max_batch_delay_ms=self.options.max_batch_delay_ms,
                    max_queue_rows=self.options.max_queue_images,
                    on_batch=self._observe,
                    on_answered=self._answered if self.options.on_answered else None,
                    name=f"batcher-{self.name}-{self.version}",
                    statistics=self.statistics,
                    scheduling=self.options.thread_scheduling,
                )
            return chosen_outputs(await self._batcher.submit(images, timeout_s, tag), outputs)
        else:
            loop = asyncio.get_running_loop()
            run, start = self._run_unbatched, time.perf_counter()
            traced = tracing.queued()  # its span, from this task's context (None: untraced)
            with self._lock:
                self._in_executor += 1
            try:
                result = await loop.run_in_executor(
                    self._executor, run, images, start, timeout_s, traced
                )
            finally:
                with self._lock:
                    self._in_executor -= 1
        if tag is not None:
            self._answered([(tag, 0, len(images))], result, images)
        return chosen_outputs(result, outputs)

    def busy_batcher(self) -> DynamicBatcher | None:
        """This version's batcher while it runs or holds requests (None: idle, or none)."""
        batcher = self._batcher
        return None if batcher is None or batcher.idle else batcher

    @property
    def pending(self) -> int:
        """Requests given to this version's thread and not yet answered (its queue's, batched)."""
        return self._in_executor if self._batcher is None else self._batcher.queued_requests

    def value_bounds(self, max_rows: int, bytes_elements: bool = False) -> dict[str, int]:
        """The most values (or BYTES elements) each input takes in a request of ``max_rows``
        rows, by name (``limits.value_bounds``), computed once: checked before decoding."""
        bounds = self._value_bounds.get((max_rows, bytes_elements))
        if bounds is None:
            bounds = value_bounds(self.card.inputs, self.batched, max_rows, bytes_elements)
            self._value_bounds[max_rows, bytes_elements] = bounds
        return bounds

    def _answered(self, tagged: Tagged, outputs: Outputs, rows: Rows) -> None:
        observer = self.options.on_answered
        if observer is None:
            return
        try:
            observer(self.name, self.version, tagged, outputs, rows)
        except Exception:  # an observer's failure must never fail the request it heard of
            log.exception("%s v%d: telling of an answer failed", self.name, self.version)

    def _idle(self) -> bool:
        """Nobody else holds this version (see ``acquire``) and its thread has nothing to run:
        the only case in which a request runs inline (on the event loop)."""
        with self._lock:
            alone = self._users <= 1 and self._in_executor == 0
        return alone and (self._batcher is None or self._batcher.idle)

    def warm_up(self) -> None:
        """A batch of zeros per ``warm_up_batch_sizes``, so no request pays for lazy
        initialisation (or a new batch size's allocations): the version is READY only after."""
        if self.kind == TENSOR:
            self._warm_up_tensors()
            return
        spec = self.input
        start = time.perf_counter()
        for size in self.options.warm_up_batch_sizes:
            self.run(zeros(spec, size))
        sizes = ", ".join(map(str, self.options.warm_up_batch_sizes))
        seconds = time.perf_counter() - start
        log.info(
            "%s v%d warmed up: batch sizes %s in %.3f s", self.name, self.version, sizes, seconds
        )
        batching = self.options.dynamic_batching
        if self.options.inline_run_max_us and not (batching and self.options.max_batch_delay_ms):
            self._measure_inline(spec)  # a batch delay asks requests to wait for company: none

    def _warm_up_tensors(self) -> None:
        """Zeros for every input, per batch size (once for a model that is not batched). Any
        graph may refuse zeros (a shape read from the data, say): a failure is logged, the
        model still serves, and its first request pays for the set-up instead."""
        sizes = self.options.warm_up_batch_sizes if self.batched else (1,)
        try:
            for size in sizes:
                self.run(NamedRows({t.name: zeros(t, size) for t in self.card.inputs}, size))
        except ServingError:
            log.warning("%s v%d: warm-up on zeros failed; serving cold", self.name, self.version)

    def _measure_inline(self, spec: TensorSpec) -> None:
        """Time batch-1 runs: quick enough (``inline.py``), a lone request will run inline."""
        image = zeros(spec, 1)
        bound_s = self.options.inline_run_max_us / 1e6
        self.inline_p99_s = quick_run_p99_s(lambda: self.run(image), bound_s)
        if self.inline_p99_s is None:
            self._served_runs = ServedRuns(bound_s)
        self._log_verdict("batch-1 run")

    def _judge_again(self, seconds: float) -> None:
        """A served batch-1 run of a version judged slow: the first series under the bound
        makes it quick for good (``inline.py``)."""
        served = self._served_runs
        verdict = served.add(seconds) if served is not None else None
        if verdict is None or verdict.p99_s is None:
            return
        self.inline_p99_s, self._served_runs = verdict.p99_s, None
        self._log_verdict("served batch-1 runs")

    def _log_verdict(self, what: str) -> None:
        verdict = describe(self.inline_p99_s, self.options.inline_run_max_us)
        log.info("%s v%d %s %s", self.name, self.version, what, verdict)

    def acquire(self) -> bool:
        """A request starts using this runtime: open until the matching ``release``.

        False once retired: the caller looks the model up again and gets its successor.
        """
        with self._lock:
            if self._retired:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            drained = self._retired and self._users == 0
        if drained:
            self.close()

    def retire(self) -> None:
        """No new requests will get this runtime: close it once the last holder releases it."""
        with self._lock:
            self._retired = True
            drained = self._users == 0
        if drained:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        # Every holder has released it, so the thread is idle and the join is immediate.
        if self._batcher is not None:
            self._batcher.stop()
        self._executor.shutdown(wait=True)
        log.debug("%s v%d closed", self.name, self.version)


def chosen_outputs(result: Outputs, outputs: Sequence[str] | None) -> Outputs:
    """The outputs a request asked for (all when it named none)."""
    return {name: result[name] for name in outputs} if outputs else result
