"""The data plane: what the server answers, whatever the protocol (in the spirit of MLServer's
``DataPlane``). Plain functions on the ``ServiceState`` that return plain data or raise the one
error tree; the REST routes, the fast path and gRPC only translate to and from their wire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.admin import check_load_parameters
from service.api.codec import InputTensor, to_pixels
from service.api.state import ServiceState
from service.core.card import TensorSpec
from service.core.errors import ModelNotReady, UnprocessableInput
from service.engine.runtime import ModelRuntime
from service.engine.version_folder import ModelState

SERVER_NAME = "cifar-serve"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"


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


def server_metadata(extensions: Sequence[str]) -> ServerMetadata:
    """``extensions``: what the protocol at hand supports (REST and gRPC differ)."""
    return ServerMetadata(SERVER_NAME, SERVER_VERSION, list(extensions))


def server_ready(state: ServiceState) -> None:
    """Nothing when loading finished and some model is ready; else ``ModelNotReady``."""
    repository = state.repository
    if not repository.ready:
        raise ModelNotReady("no model is ready" if repository.loaded else "still loading models")


def model_runtime(state: ServiceState, name: str, version: str | None) -> ModelRuntime:
    """The served runtime a request names: 404 unknown, 503 not ready (leased in a request)."""
    return state.repository.get(name, version)


def model_metadata(state: ServiceState, name: str, version: str | None) -> ModelMetadata:
    runtime = model_runtime(state, name, version)
    ready = [str(e.version) for e in state.repository.versions(name) if e.state is ModelState.READY]
    card = runtime.card
    return ModelMetadata(
        name=name,
        versions=ready,
        platform=PLATFORM,
        inputs=list(card.inputs),
        outputs=list(card.outputs),
        execution_providers=list(runtime.providers),
        class_names=list(card.class_names),
    )


def model_pixels(
    runtime: ModelRuntime, inputs: Sequence[InputTensor], requested: Sequence[str]
) -> np.ndarray:
    """The one image batch a request gives the model, after checking it names the model's
    input and only outputs the model has."""
    if len(inputs) != 1 or inputs[0].name != runtime.input.name:
        given = [t.name for t in inputs]
        raise UnprocessableInput(
            f"model {runtime.name!r} takes one input {runtime.input.name!r}, "
            f"the request gives {given}"
        )
    unknown = sorted(set(requested) - set(runtime.output_names))
    if unknown:
        raise UnprocessableInput(
            f"unknown output(s) {unknown}; model {runtime.name!r} has {runtime.output_names}"
        )
    return to_pixels(inputs[0], runtime.image_shape)


async def infer(
    state: ServiceState,
    runtime: ModelRuntime,
    inputs: Sequence[InputTensor],
    requested: Sequence[str],
) -> dict[str, np.ndarray]:
    """The outputs ``requested`` (all when empty) for decoded input tensors."""
    pixels = model_pixels(runtime, inputs, requested)
    return await state.infer(runtime, pixels, list(requested) or None)


def repository_index(state: ServiceState, ready: bool) -> list[dict[str, Any]]:
    """Every version on disk (``name``, ``version``, ``state``, ``reason``), or the READY ones."""
    rows = state.repository.index()
    return [r for r in rows if r["state"] == ModelState.READY.value] if ready else rows


async def load_model(state: ServiceState, name: str, parameter_names: Iterable[str]) -> None:
    """Load (or reload) a model under its version policy; failed versions are retried."""
    check_load_parameters(parameter_names)
    await asyncio.to_thread(state.repository.load_model, name)


async def unload_model(state: ServiceState, name: str) -> None:
    """Stop serving every version of a model (requests in flight finish) until a load."""
    await asyncio.to_thread(state.repository.unload_model, name)
