"""A model version's configuration, built once from what is really in force (the card, the
runtime's batcher options, the version policy, the settings) so REST's JSON and gRPC's
``ModelConfig`` message are two encodings of one value and cannot disagree."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.core.card import TensorSpec
from service.core.version_policy import VersionPolicy
from service.dataplane.response_cache import ResponseCache
from service.dataplane.types import ModelMetadata
from service.engine.runtime import RuntimeOptions
from service.settings import Settings


@dataclass(frozen=True)
class DynamicBatching:
    """The batcher's settings in Triton's terms (``preferred_batch_size``: the most rows one
    onnxruntime run takes; ``max_queue_size``: images, where Triton counts requests)."""

    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    default_timeout_microseconds: int  # REQUEST_TIMEOUT_US; a request's ``timeout`` overrides it
    max_queue_size: int


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # the most images one request may carry (MAX_IMAGES_PER_REQUEST)
    inputs: list[TensorSpec]  # shapes with the batch axis; the wires drop it (Triton's dims)
    outputs: list[TensorSpec]
    version_policy: VersionPolicy
    dynamic_batching: DynamicBatching | None  # None: each request is one run
    response_cache: bool
    parameters: dict[str, str] = field(default_factory=dict)  # JSON strings (class names, ...)


def version_policy_dict(policy: VersionPolicy) -> dict[str, object]:
    """Triton's ``version_policy`` object (the form ``config.json`` takes too)."""
    if policy.kind == "latest":
        return {"latest": {"num_versions": policy.num_versions}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


def build_model_config(
    meta: ModelMetadata,
    options: RuntimeOptions,
    policy: VersionPolicy,
    settings: Settings,
    cache: ResponseCache,
) -> ModelConfig:
    """The config of the version ``meta`` describes, from the options its runtime (and its
    batcher) were built with."""
    batching = None
    if options.dynamic_batching:
        batching = DynamicBatching(
            preferred_batch_size=[options.max_batch_size],
            max_queue_delay_microseconds=round(options.max_batch_delay_ms * 1000),
            default_timeout_microseconds=settings.request_timeout_us,
            max_queue_size=options.max_queue_images,
        )
    return ModelConfig(
        name=meta.name,
        platform=meta.platform,
        backend="onnxruntime",
        max_batch_size=settings.max_images_per_request,
        inputs=list(meta.inputs),
        outputs=list(meta.outputs),
        version_policy=policy,
        dynamic_batching=batching,
        response_cache=cache.enabled(meta.name),
        parameters={
            "class_names": json.dumps(meta.class_names),
            "execution_providers": json.dumps(meta.execution_providers),
        },
    )
