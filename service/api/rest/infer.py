"""The v2 infer call over REST, as the fast path serves it: decode the body, check it against the
URL, run it on the data plane, encode."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.api.rest.codec import decode_infer_request, encode_infer_response
from service.api.rest.http_io import is_json_type
from service.core.card import TensorSpec
from service.core.errors import Forbidden, InvalidInput, UnsupportedMediaType
from service.core.limits import MAX_ELEMENTS, value_bounds
from service.core.version_policy import parse_version
from service.dataplane.dataplane import DataPlane
from service.dataplane.decode_in_batch import Undecided, batch_decoding, infer_in_batch
from service.dataplane.trace_settings import step
from service.dataplane.types import InferRequest, InferResponse
from service.engine.runtime import ModelRuntime

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferReply:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def most_values(inputs: Sequence[TensorSpec], batched: bool, max_rows: int) -> int | None:
    """The most values a request's input tensors can hold in all (``value_bounds`` summed), or
    None where that has no fixed bound (an open axis besides the batch's) or where counting
    commas would not count values (BYTES: a string may hold commas)."""
    bounds = value_bounds(inputs, batched, max_rows)
    open_axis = max(bounds.values(), default=0) >= MAX_ELEMENTS
    if open_axis or any(spec.datatype == "BYTES" for spec in inputs):
        return None
    return sum(bounds.values())


async def v2_infer(
    plane: DataPlane,
    name: str,
    version: str | None,
    body: bytes,
    content_type: str | None,
    header_length: str | None,
    browser: bool = False,
) -> InferReply:
    """Answer one v2 infer request (JSON, or the binary tensor extension when
    ``Inference-Header-Content-Length`` is given). A ``browser``'s (Origin or Sec-Fetch-Site
    sent) may not name shared memory: a page whose name was re-pointed at this host passes the
    same-site check, and regions belong to the host's own clients."""
    runtime = plane.model(name, version)
    length: int | None = None
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):  # "²" is a digit
            raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number")
        length = int(header_length)
    elif not is_json_type(content_type):
        raise UnsupportedMediaType(
            f"expected application/json (or the binary extension's header), got {content_type!r}"
        )
    # A model without a batch axis has no rows to bound: its shape is, by the element limit.
    max_rows = plane.settings.max_images_per_request if runtime.batched else MAX_ELEMENTS
    light = len(body) <= plane.settings.inline_decode_bytes  # else off the event loop
    if light and length is not None and b'"BYTES"' in body[:length]:
        light = False  # binary BYTES are split in Python, 0.6 us each 4-byte element: not here
    json_size = len(body) if length is None else length  # what is parsed as JSON
    # Counting a body's values costs about 0.5 us a kB: for bodies too large for the loop only.
    max_values = None if light else most_values(runtime.card.inputs, runtime.batched, max_rows)
    bounds = runtime.value_bounds(max_rows, bytes_elements=True)  # BYTES held to them
    infer = None
    batcher = batch_decoding(plane, runtime) if light and length is None and not browser else None
    if batcher is not None:  # under load: decoded on the model's thread, in its batch
        decode = functools.partial(_decode_plain, body, max_rows, bounds, name, runtime.version)
        try:
            return await _reply(plane, *await infer_in_batch(plane, runtime, batcher, decode))
        except Undecided as undecided:
            infer = undecided.request
    if infer is None:
        with step("decode"):
            infer = await plane.work.run_decoding(
                json_size, light, decode_infer_request, body, length, max_rows, max_values, bounds
            )
    runtime = _checked(plane, name, version, runtime, infer, browser)
    return await _reply(plane, infer, await plane.infer(runtime, infer))


def _decode_plain(
    body: bytes, max_rows: int, bounds: dict[str, int], name: str, version: int
) -> InferRequest:
    """A JSON body's request, decoded where it is light (on the model's thread, in its batch:
    ``decode_in_batch``); ``Undecided`` where it names another model or version than the one
    that decodes it (``_checked`` then says so, or finds that version)."""
    infer = decode_infer_request(body, None, max_rows, None, bounds)
    if infer.model_name not in (None, name) or infer.model_version not in (None, str(version)):
        raise Undecided(infer)
    return infer


def _checked(
    plane: DataPlane,
    name: str,
    version: str | None,
    runtime: ModelRuntime,
    infer: InferRequest,
    browser: bool,
) -> ModelRuntime:
    """The runtime that answers ``infer``: the URL's, or the version its body names where the
    URL names none; errors where the body contradicts the URL, or a browser names shared
    memory."""
    if browser and infer.names_shared_memory:
        raise Forbidden("a browser's request may not name shared memory, a local client's")
    if infer.model_name is not None and infer.model_name != name:
        raise InvalidInput(
            f"the body's model_name {infer.model_name!r} contradicts the URL's model {name!r}"
        )
    if infer.model_version is not None:
        if version is None:  # the body names the version the URL leaves open
            return plane.model(name, infer.model_version)
        if parse_version(infer.model_version) != parse_version(version):
            raise InvalidInput(
                f"the body's model_version {infer.model_version!r} contradicts the URL's "
                f"version {version!r}"
            )
    return runtime


async def _reply(plane: DataPlane, infer: InferRequest, response: InferResponse) -> InferReply:
    """``response`` encoded as ``infer`` asks (JSON, or binary outputs after a JSON header). A
    large answer is written on the work pool, a slice at a time: on the loop, 30 MB of float32
    outputs as JSON held every other request 239 ms."""
    binary = {o.name: o.binary for o in infer.outputs} or dict.fromkeys(
        response.outputs, infer.binary_output
    )
    light = sum(a.nbytes for a in response.outputs.values()) <= plane.settings.inline_decode_bytes
    with step("encode"):
        payload, json_length = await plane.work.run_here_if_light(
            light, encode_infer_response, response, binary, not light
        )
    if json_length is None:
        return InferReply(payload, "application/json")
    return InferReply(
        payload,
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(json_length)},
    )
