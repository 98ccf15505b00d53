"""The v2 infer call itself, shared by the FastAPI route (which documents it) and the fast path
(which serves it): decode, check against the model, run, encode."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.api.app import ServiceState, is_json_type
from service.api.codec import decode_infer_request, encode_infer_response, to_pixels
from service.core.errors import InvalidInput, UnprocessableInput, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferReply:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


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
    if len(infer.inputs) != 1 or infer.inputs[0].name != runtime.input.name:
        given = [t.name for t in infer.inputs]
        raise UnprocessableInput(
            f"model {name!r} takes one input {runtime.input.name!r}, the request gives {given}"
        )
    pixels = to_pixels(infer.inputs[0], runtime.image_shape)
    requested = [o.name for o in infer.outputs]
    unknown = sorted(set(requested) - set(runtime.output_names))
    if unknown:
        raise UnprocessableInput(
            f"unknown output(s) {unknown}; model {name!r} has {runtime.output_names}"
        )
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
