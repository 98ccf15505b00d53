"""The settings of how requests share a model's runs, and of the threads that do the work.

A base of ``service.settings.Settings``, so they are fields of the one settings class (the same
environment variables); kept here to keep that module readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from service.engine.thread_policy import ThreadScheduling


class BatchingSettings(BaseSettings):
    """Dynamic batching, inline runs and thread scheduling."""

    dynamic_batching: bool = Field(
        default=True,
        description=(
            "Coalesce concurrent requests for a model version into shared onnxruntime runs "
            "(false: each request is one run)."
        ),
    )
    max_batch_size: int = Field(
        default=256,
        ge=1,
        description=(
            "Most images in one onnxruntime run; larger requests are split and joined again."
        ),
    )
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description=(
            "Extra wait for company before a run (0: run whatever is queued as soon as the "
            "model is free, which batches under load and adds nothing for a lone client)."
        ),
    )
    inline_run_max_us: int = Field(
        default=250,
        ge=0,
        le=10_000,
        description=(
            "A lone 1-image request runs on the event loop, sparing the hop to the model's "
            "thread, if the slowest 1% of the version's batch-1 runs timed at warm-up stay "
            "under this (needs WARM_UP); it also bounds how long such a run holds the loop. "
            '0: never (docs/benchmarks.md, "One client\'s p50").'
        ),
    )
    decode_in_batch: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "Under load (the model's thread busy) a small plain JSON infer body is decoded on "
            "the model's thread just before its run, with the others of its batch, instead of "
            "on the event loop as it arrives. `auto`: where a worker process has one core "
            "(WORKERS per core, or pinned), which it speeds up; with more it costs the overlap "
            'of decoding and running (docs/benchmarks.md, "Decoding in the batch").'
        ),
    )
    max_queue_images: int = Field(
        default=2048,
        ge=1,
        description="Images waiting for a model before new requests get 503 with Retry-After.",
    )
    thread_scheduling: ThreadScheduling = Field(
        default="batch",
        description=(
            "Linux scheduling of every thread beside the event loop: the models' (onnxruntime's "
            "pools too), the work pool, loads and polls, the prediction log's writer. `batch` "
            "(SCHED_BATCH) keeps their fair share of the CPU but stops them "
            "taking the event loop's core the moment a request wakes them, so under load the "
            "loop reads every waiting request before a run starts; `normal`: the kernel's "
            "default (docs/benchmarks.md)."
        ),
    )
