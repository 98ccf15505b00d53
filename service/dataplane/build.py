"""What the data plane is built of, from the settings: each model's runtime options, the cores
one worker process may use."""

from __future__ import annotations

import os

from service.engine.metrics import Metrics
from service.engine.runtime import RuntimeOptions
from service.settings import Settings


def cores_per_worker(settings: Settings) -> int:
    """The cores this process may use, shared out over the WORKERS processes."""
    return max(1, len(os.sched_getaffinity(0)) // settings.workers)


def runtime_options(settings: Settings, metrics: Metrics) -> RuntimeOptions:
    """How each model's onnxruntime session and batcher are set up, from the settings."""
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
        require_providers=settings.require_providers,
        on_batch=metrics.observe_batch,
    )
