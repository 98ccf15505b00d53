"""A model version's configuration, built once from what is really in force (the card, the
runtime's batcher options, the version policy, the settings) so REST's JSON and gRPC's
``ModelConfig`` message are two encodings of one value and cannot disagree."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.core.card import IMAGE_CLASSIFIER, TensorSpec
from service.core.errors import ModelNotReady
from service.core.version_policy import VersionPolicy
from service.dataplane.response_cache import ResponseCache
from service.dataplane.types import ModelMetadata
from service.engine.providers import GPU_PROVIDERS
from service.engine.triton_config import TritonConfig
from service.engine.version_folder import ModelVersion
from service.settings import Settings

# The labels live in the card (``class_names``); Triton's clients only test that an output has a
# label file, and Triton has no route that returns one either: labels reach clients through the
# classification extension.
LABEL_FILENAME = "labels.txt"


@dataclass(frozen=True)
class DynamicBatching:
    """The batcher's settings in Triton's terms (``preferred_batch_size``: the most rows one
    onnxruntime run takes; ``max_queue_size``: images, where Triton counts requests)."""

    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    default_timeout_microseconds: int  # REQUEST_TIMEOUT_US; a request's ``timeout`` overrides it
    max_queue_size: int


@dataclass(frozen=True)
class ConfigTensor:
    """An input or output as Triton's config shows it: the spec (with the batch axis, which the
    wires drop), the input's layout, the output's label file ("" for none)."""

    spec: TensorSpec
    format: str = "FORMAT_NONE"  # FORMAT_NHWC: an image classifier's pixels
    label_filename: str = ""
    batched: bool = True  # the spec's first axis is the batch (max_batch_size > 0)

    @property
    def dims(self) -> list[int]:
        """Triton's ``dims``: the shape without the batch axis that max_batch_size implies."""
        return self.spec.shape[1:] if self.batched else list(self.spec.shape)


@dataclass(frozen=True)
class InstanceGroup:
    """Where the model runs: one instance (a session and its batcher thread) per worker process."""

    kind: str  # KIND_CPU, or KIND_GPU when the session's first provider is a GPU's
    count: int
    gpus: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # the most images one request may carry (MAX_IMAGES_PER_REQUEST)
    inputs: list[ConfigTensor]
    outputs: list[ConfigTensor]
    version_policy: VersionPolicy
    dynamic_batching: DynamicBatching | None  # None: each request is one run
    response_cache: bool
    instance_group: InstanceGroup
    warm_up_batch_sizes: list[int]  # Triton's model_warmup: one run of zeros per size
    parameters: dict[str, str] = field(default_factory=dict)  # JSON strings (class names, ...)


def version_policy_dict(policy: VersionPolicy) -> dict[str, object]:
    """Triton's ``version_policy`` object (the form ``config.json`` takes too)."""
    if policy.kind == "latest":
        return {"latest": {"num_versions": policy.num_versions}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


def _batched(meta: ModelMetadata, file: TritonConfig | None) -> bool:
    """Whether the first axis is the batch: the runtime's view, or config.pbtxt's
    ``max_batch_size: 0`` (each request runs alone, its dims the whole shape)."""
    return meta.batched and (file is None or file.max_batch_size > 0)


def _inputs(meta: ModelMetadata, file: TritonConfig | None, batched: bool) -> list[ConfigTensor]:
    """An image classifier's one input is NHWC pixels (``[N, H, W, C]``, C of 1 or 3); a
    config.pbtxt's inputs have the format it gives them."""
    image = meta.kind == IMAGE_CLASSIFIER and len(meta.inputs) == 1
    nhwc = image and len(meta.inputs[0].shape) == 4 and meta.inputs[0].shape[3] in (1, 3)
    given = {t.spec.name: t.format for t in file.inputs} if file else {}
    layout = "FORMAT_NHWC" if nhwc else "FORMAT_NONE"
    return [ConfigTensor(s, given.get(s.name, layout), batched=batched) for s in meta.inputs]


def _outputs(meta: ModelMetadata, file: TritonConfig | None, batched: bool) -> list[ConfigTensor]:
    """Class names label every FP output with one score per class (logits and probabilities);
    a config.pbtxt's outputs carry the label file it names (or none)."""
    classes = len(meta.class_names)
    given = {t.spec.name: t.label_filename for t in file.outputs} if file else {}

    def label(spec: TensorSpec) -> str:
        if spec.name in given:
            return given[spec.name]
        fits = classes > 0 and spec.datatype.startswith("FP") and spec.shape[-1:] == [classes]
        return LABEL_FILENAME if fits else ""

    return [ConfigTensor(s, label_filename=label(s), batched=batched) for s in meta.outputs]


def _instance_group(meta: ModelMetadata, workers: int) -> InstanceGroup:
    first = meta.execution_providers[0] if meta.execution_providers else ""
    if first in GPU_PROVIDERS:
        return InstanceGroup("KIND_GPU", workers, [0])
    return InstanceGroup("KIND_CPU", workers)


def build_model_config(
    meta: ModelMetadata,
    entry: ModelVersion,
    policy: VersionPolicy,
    settings: Settings,
    cache: ResponseCache,
) -> ModelConfig:
    """The config of the version ``meta`` describes (``entry``), from the options its runtime
    (and its batcher) were built with and its model folder's config.pbtxt, if any."""
    if entry.runtime is None:  # unloaded since the request looked it up
        raise ModelNotReady(f"model {meta.name!r} version {entry.version} is not loaded")
    options, file = entry.runtime.options, entry.config
    batched = _batched(meta, file)
    batching = None
    if options.dynamic_batching and batched:
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
        max_batch_size=options.max_images_per_request if batched else 0,
        inputs=_inputs(meta, file, batched),
        outputs=_outputs(meta, file, batched),
        version_policy=policy,
        dynamic_batching=batching,
        response_cache=cache.enabled(meta.name),
        instance_group=_instance_group(meta, settings.workers),
        warm_up_batch_sizes=list(options.warm_up_batch_sizes) if options.warm_up else [],
        parameters={
            "class_names": json.dumps(meta.class_names),
            "execution_providers": json.dumps(meta.execution_providers),
        },
    )
