"""The data plane's requests, responses and metadata: one type each, tensors as numpy. The REST
and gRPC codecs decode their wire into these and encode these onto it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.core.card import IMAGE_CLASSIFIER, ModelCard, TensorSpec
from service.core.shapes import LayerTable
from service.engine.layers import LayerReport
from service.engine.version_folder import ModelVersion


@dataclass(frozen=True)
class SharedMemoryRef:
    """Where a tensor lies in Triton's system shared memory: ``byte_size`` bytes at ``offset``
    in the registered ``region`` (``shared_memory.SharedMemoryRegistry``)."""

    region: str
    byte_size: int
    offset: int = 0

    def parameters(self) -> dict[str, str | int]:
        """The tensor's wire parameters, as Triton answers an output written to a region."""
        found: dict[str, str | int] = {
            "shared_memory_region": self.region,
            "shared_memory_byte_size": self.byte_size,
        }
        if self.offset:
            found["shared_memory_offset"] = self.offset
        return found


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # already in ``shape``, in the numpy dtype of ``datatype``
    # Triton's system shared memory: the data lies there; ``data`` is empty until the data plane
    # reads it
    shared_memory: SharedMemoryRef | None = None


@dataclass
class RequestedOutput:
    name: str
    binary: bool  # REST's binary tensor extension: sent as raw bytes after the JSON header
    shared_memory: SharedMemoryRef | None = None  # written there, answered without data


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # none: every output
    binary_output: bool = False
    model_name: str | None = None  # as the body names it (KServe's SDK does); None when absent
    model_version: str | None = None
    timeout_us: int = 0  # the ``timeout`` parameter (Triton's, microseconds); 0: the default
    # Triton's classification extension: output name -> how many classes to answer (top k)
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def names_shared_memory(self) -> bool:
        """Whether any input or output of it is in a shared memory region."""
        inputs = any(t.shared_memory is not None for t in self.inputs)
        return inputs or any(o.shared_memory is not None for o in self.outputs)


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: dict[str, np.ndarray]
    # the outputs written to shared memory, as answered (their data stays out of the reply)
    shared_memory: dict[str, SharedMemoryRef] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]  # the READY ones
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    execution_providers: list[str]  # what the session runs on, in order of preference
    class_names: list[str]
    kind: str = IMAGE_CLASSIFIER  # or TENSOR: served on the tensor paths only
    batched: bool = (
        True  # requests share runs along a leading batch axis (Triton's max_batch_size > 0)
    )


@dataclass(frozen=True)
class RepositoryEntry:
    """One version on disk, as the repository extension's index lists it."""

    name: str
    version: str
    state: str  # READY, UNAVAILABLE or UNLOADED
    reason: str


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model: its state, why, what it runs on and its card (if it has one)."""

    version: int
    state: str
    reason: str
    execution_providers: list[str] | None  # None when not loaded
    card: ModelCard | None

    @classmethod
    def of(cls, entry: ModelVersion) -> VersionStatus:
        runtime = entry.runtime
        providers = list(runtime.providers) if runtime is not None else None
        return cls(entry.version, entry.state.value, entry.reason, providers, entry.card)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    served: VersionStatus  # the version unversioned URLs use
    versions: list[VersionStatus]  # every version on disk, oldest first


@dataclass(frozen=True)
class ModelLayers:
    """The layer table of one served version, labelled with that very version."""

    name: str
    version: int
    table: LayerTable
    report: LayerReport  # the table with each row's ONNX nodes
