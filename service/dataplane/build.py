"""What the data plane is built of, from the settings: each model's runtime options, the cores
one worker process may use, the work pool, the shared memory registry, the worker group."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.core.version_policy import VersionPolicy
from service.dataplane.shared_memory import SharedMemoryRegistry
from service.dataplane.statistics import collect_statistics
from service.dataplane.workers import WorkerGroup
from service.engine import thread_policy
from service.engine.last_good import LAST_GOOD, LastGood
from service.engine.metrics import Metrics
from service.engine.repository import ModelRepository
from service.engine.runtime import AnswerObserver, RuntimeOptions
from service.engine.statistics import VersionStatistics
from service.engine.triton_metrics import TritonMetrics
from service.engine.work_pool import WorkPool
from service.settings import Settings


def cores_per_worker(settings: Settings) -> int:
    """The cores this process may use, shared out over the WORKERS processes."""
    return max(1, len(os.sched_getaffinity(0)) // settings.workers)


def decodes_in_batch(settings: Settings) -> bool:
    """DECODE_IN_BATCH, ``auto`` resolved: on where this worker has one core for its loop and
    its models' threads (on one core +10 % requests/s at 64 clients; with two, -6 %)."""
    if settings.decode_in_batch == "auto":
        return cores_per_worker(settings) == 1
    return settings.decode_in_batch


def work_pool(settings: Settings) -> WorkPool:
    """Where decoding and encoding run, off the event loop."""
    threads = settings.work_threads or cores_per_worker(settings)
    return WorkPool(
        threads,
        settings.max_waiting_work,
        settings.thread_scheduling,
        settings.process_decode_bytes,
    )


def background_executor(settings: Settings) -> ThreadPoolExecutor:
    """The event loop's default executor (``asyncio.to_thread``: model loads, repository polls),
    scheduled as the models' threads; onnxruntime's own pool threads, made by the thread that
    makes a session, take that policy too."""
    return thread_policy.executor(settings.thread_scheduling, None, "background")


def runtime_options(
    settings: Settings, metrics: Metrics, on_answered: AnswerObserver | None = None
) -> RuntimeOptions:
    """How each model's onnxruntime session and batcher are set up, from the settings;
    ``on_answered`` hears of each run's tagged answers (the prediction log)."""
    return RuntimeOptions(
        providers=tuple(settings.providers),
        intra_op_threads=settings.intra_op_threads or cores_per_worker(settings),
        inter_op_threads=settings.inter_op_threads,
        allow_spinning=settings.ort_allow_spinning,
        graph_optimization_level=settings.graph_optimization_level,
        warm_up=settings.warm_up,
        warm_up_batch_sizes=tuple(settings.warm_up_batch_sizes),
        dynamic_batching=settings.dynamic_batching,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_images=settings.max_queue_images,
        max_images_per_request=settings.max_images_per_request,
        inline_run_max_us=settings.inline_run_max_us,
        thread_scheduling=settings.thread_scheduling,
        require_providers=settings.require_providers,
        on_batch=metrics.observe_batch,
        on_answered=on_answered,
    )


def shared_memory_registry(settings: Settings) -> SharedMemoryRegistry:
    """Triton's system shared memory: with WORKERS > 1 every worker holds every region (through
    WORKERS_DIR), so it is off only without that folder (each process would hold its own)."""
    shared = settings.workers == 1 or settings.workers_dir is not None
    regions = settings.shared_memory_regions if shared else 0
    return SharedMemoryRegistry(regions, settings.inline_decode_bytes, settings.max_request_bytes)


def model_repository(settings: Settings, options: RuntimeOptions) -> ModelRepository:
    """The repository; with WORKERS > 1 it keeps the files each version loaded in WORKERS_DIR,
    so a worker started while a served version's files are bad on disk serves what its
    siblings still do (``last_good``)."""
    folder = settings.workers_dir  # with one worker, a given folder's copies would outlive it
    copies = LastGood(folder / LAST_GOOD) if folder and settings.workers > 1 else None
    policy = VersionPolicy.parse(settings.version_policy)
    return ModelRepository(settings.model_repository, options, policy, copies)


def worker_group(
    settings: Settings,
    repository: ModelRepository,
    forget: Callable[[str], None],
    regions: SharedMemoryRegistry,
) -> WorkerGroup | None:
    """WORKERS > 1: the repository calls, regions and statistics every worker shares (None: a
    lone process)."""
    folder = settings.workers_dir
    return WorkerGroup(folder, repository, forget, regions=regions) if folder else None


def triton_metrics(
    metrics: Metrics,
    repository: ModelRepository,
    workers: WorkerGroup | None,
    cached: Callable[[str], bool],
) -> None:
    """Triton's metric names on /metrics, read at each scrape from every loaded version's
    statistics, summed over the workers (theirs at most ``STATISTICS_INTERVAL_S`` old)."""

    def group() -> list[VersionStatistics]:
        stats = collect_statistics(repository, None, None)
        return stats if workers is None else workers.add_others(stats)

    metrics.registry.register(TritonMetrics(group, cached))
