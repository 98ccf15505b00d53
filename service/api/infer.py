"""The v2 infer call itself, shared by the FastAPI route (which documents it) and the fast path
(which serves it): decode, check against the model, run, encode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.api.app import ServiceState, is_json_type
from service.api.codec import (
    InputTensor,
    decode_infer_request,
    encode_infer_response,
    to_pixels,
)
from service.core.errors import InvalidInput, UnprocessableInput, UnsupportedMediaType
from service.engine.repository import parse_version
from service.engine.runtime import ModelRuntime

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferReply:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def model_pixels(
    runtime: ModelRuntime, inputs: Sequence[InputTensor], requested: Sequence[str]
) -> np.ndarray:
    """The one image batch a request gives the model, after checking it names the model's
    input and only outputs the model has (REST and gRPC alike)."""
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


async def v2_infer(
    state: ServiceState,
    name: str,
    version: str | None,
    body: bytes,
    content_type: str | None,
    header_length: str | None,
) -> InferReply:
    """Answer one v2 infer request (JSON, or the binary tensor extension when
    ``Inference-Header-Content-Length`` is given)."""
    runtime = state.repository.get(name, version)
    length: int | None = None
    if header_length is not None:
        if not header_length.isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number")
        length = int(header_length)
    elif not is_json_type(content_type):
        raise UnsupportedMediaType(
            f"expected application/json (or the binary extension's header), got {content_type!r}"
        )
    infer = decode_infer_request(body, length, state.settings.max_images_per_request)
    if infer.model_name is not None and infer.model_name != name:
        raise InvalidInput(
            f"the body's model_name {infer.model_name!r} contradicts the URL's model {name!r}"
        )
    if infer.model_version is not None:
        if version is None:  # the body names the version the URL leaves open
            runtime = state.repository.get(name, infer.model_version)
        elif parse_version(infer.model_version) != parse_version(version):
            raise InvalidInput(
                f"the body's model_version {infer.model_version!r} contradicts the URL's "
                f"version {version!r}"
            )
    requested = [o.name for o in infer.outputs]
    pixels = model_pixels(runtime, infer.inputs, requested)
    outputs = await state.infer(runtime, pixels, requested or None)
    binary = {o.name: o.binary for o in infer.outputs} or dict.fromkeys(
        outputs, infer.binary_output
    )
    payload, json_length = encode_infer_response(name, runtime.version, infer.id, outputs, binary)
    if json_length is None:
        return InferReply(payload, "application/json")
    return InferReply(
        payload,
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(json_length)},
    )
