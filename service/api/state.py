"""What every adapter (REST routes, the fast path, gRPC) serves from: settings, the model
repository, metrics and the inspection sessions, built once from the settings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from service.core.errors import PayloadTooLarge
from service.core.version_policy import VersionPolicy
from service.engine.activations import ActivationSessions
from service.engine.metrics import Metrics
from service.engine.repository import ModelRepository
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.work_pool import WorkPool
from service.settings import Settings


@dataclass
class ServiceState:
    """Hung on ``app.state.service``; routes take it as the ``State`` dependency."""

    settings: Settings
    repository: ModelRepository
    metrics: Metrics
    activations: ActivationSessions  # the explorer's per-layer sessions, made on first use
    work: WorkPool  # where decoding and encoding run, off the event loop

    async def infer(
        self, runtime: ModelRuntime, pixels: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one validated batch; the single place a request meets a model."""
        limit = self.settings.max_images_per_request
        if pixels.shape[0] > limit:
            raise PayloadTooLarge(f"{pixels.shape[0]} images, more than the limit of {limit}")
        return await runtime.infer(pixels, outputs)

    def close(self) -> None:
        """Close every session (blocks until a poll still loading has finished)."""
        self.work.close()
        self.activations.close()
        self.repository.close()


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
        dynamic_batching=settings.dynamic_batching,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_images=settings.max_queue_images,
        require_providers=settings.require_providers,
        on_batch=metrics.observe_batch,
    )


def build_state(settings: Settings) -> ServiceState:
    """The state for ``settings``; nothing is loaded yet (the app's lifespan loads)."""
    metrics = Metrics()
    options = runtime_options(settings, metrics)
    policy = VersionPolicy.parse(settings.version_policy)
    repository = ModelRepository(settings.model_repository, options, policy)
    metrics.track_providers(repository.provider_use)
    work = WorkPool(settings.work_threads or cores_per_worker(settings), settings.max_waiting_work)
    return ServiceState(settings, repository, metrics, ActivationSessions(options), work)


async def get_state(request: Request) -> ServiceState:
    """The dependency behind ``State``. Async on purpose: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop per request (about 0.25 ms on :predict here)."""
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]
