"""The v1 ``:predict`` body as one uint8 image batch, in the shapes TF Serving's REST API documents.

Row format: ``{"instances": [...]}``, each instance a nested pixel array, ``{"b64": "<image>"}``,
or an object naming the model's one input (``{"images": [[...]]}``, ``{"image_bytes": {"b64":
...}}``: TF Serving's ``*_bytes`` convention). Columnar format: ``{"inputs": [...]}`` (the batch
itself) or ``{"inputs": {"images": [...]}}``. ``signature_name`` may name the model's one
signature. Pixels are checked here, once, as ``codec`` checks v2 tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from service.api.images import ImageLimits, decode_b64_images
from service.api.rest.http_io import validated_body
from service.api.rest.json_wire import loads_object
from service.api.rest.schemas import PREDICT_FIELDS, PredictRequest
from service.api.tensors import array_from_json
from service.core.card import DEFAULT_SIGNATURE
from service.core.errors import InvalidInput, PayloadTooLarge, UnprocessableInput
from service.core.limits import check_json_values

# Nested pixel arrays cost about four times as much per byte to decode as a v2 tensor's flat
# numbers (1 image: 15 KB in 0.8 ms against 0.2 ms a flat 13 KB), so bodies of them are decoded
# on the event loop only up to a quarter of INLINE_DECODE_BYTES.
NESTED_JSON_COST = 4
BYTES_SUFFIX = "_bytes"  # TF Serving: an input so named carries {"b64": ...} values

# [(base64 text, where), ...] -> HxWxC uint8 images, decoded under one request's image budget
DecodeB64 = Callable[[list[tuple[str, str]]], list[np.ndarray]]


def decode_predict_body(
    raw: bytes,
    image_shape: tuple[int, int, int],
    input_name: str,
    signature_name: str,
    limits: ImageLimits,
    max_rows: int,
    count_values: bool = True,
) -> tuple[np.ndarray, int | None]:
    """A ``:predict`` body as one uint8 batch and its ``top_k``: parsed and checked once, its
    base64 images decoded; with ``count_values``, refused first if it holds more values than
    ``max_rows`` images (``check_json_values``, about 0.5 us a kB: not worth it for a small
    body). Module-level and given only picklable values, so that the largest bodies can be
    decoded in the work pool's child process (``WorkPool.run_decoding``)."""
    if count_values:
        values = max_rows * math.prod(image_shape)
        check_json_values(raw, values, f"{max_rows} images of {list(image_shape)}")
    b64 = functools.partial(decode_b64_images, size=image_shape[:2], limits=limits)
    body = validated_body(PredictRequest, loads_object(raw, PREDICT_FIELDS))
    pixels = predict_pixels(body, image_shape, input_name, signature_name, b64, max_rows)
    return pixels, body.top_k


def predict_pixels(
    body: PredictRequest,
    image_shape: Sequence[int],
    input_name: str,
    signature_name: str,
    decode_b64: DecodeB64,
    max_rows: int,
) -> np.ndarray:
    """A validated ``:predict`` body (row or columnar format) as one uint8 batch for the model."""
    signature = body.signature_name
    if signature is not None and signature not in (signature_name, DEFAULT_SIGNATURE):
        raise InvalidInput(
            f"unknown signature_name {signature!r}; this model has one signature, "
            f"{signature_name!r}"
            + (
                ""
                if signature_name == DEFAULT_SIGNATURE
                else f" (also answering to {DEFAULT_SIGNATURE!r})"
            )
        )
    given = body.model_fields_set  # a field given as null is given
    if "instances" in given and "inputs" in given:
        raise InvalidInput("give 'instances' (row format) or 'inputs' (columnar format), not both")
    if "inputs" in given:
        instances = _columnar(body.inputs, input_name)
    elif "instances" in given:
        instances = body.instances
    else:
        raise InvalidInput("the body needs 'instances' (row format) or 'inputs' (columnar format)")
    return instances_to_pixels(instances, image_shape, decode_b64, max_rows, input_name)


def _named_input(value: Mapping[str, Any], input_name: str, where: str) -> Any | None:
    """The value of ``{"<input>": value}`` / ``{"<name>_bytes": value}``; None for another shape."""
    if len(value) != 1 or "b64" in value:
        return None
    (key,) = value
    if key == input_name or str(key).endswith(BYTES_SUFFIX):
        return value[key]
    raise UnprocessableInput(
        f"{where}: an object instance needs a 'b64' string, or one key naming the model's input "
        f"{input_name!r} (or ending in {BYTES_SUFFIX!r}); got {key!r}"
    )


def _unnamed(instance: Any, input_name: str, where: str) -> Any:
    """A row instance without the ``{"<input>": ...}`` wrapper, if it has one."""
    if isinstance(instance, Mapping):
        named = _named_input(instance, input_name, where)
        if named is not None:
            return named
    return instance


def _columnar(inputs: Any, input_name: str) -> Any:
    """Columnar ``inputs`` as a list of instances: the batch itself, or under the input's name."""
    if isinstance(inputs, Mapping):
        named = _named_input(inputs, input_name, "'inputs'")
        if named is None and "b64" not in inputs:
            raise InvalidInput(f"'inputs' must name the model's one input, {input_name!r}")
        inputs = inputs if named is None else named
    if isinstance(inputs, Mapping):  # one {"b64": ...} image: a batch of one
        return [inputs]
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of instances or an object naming the input")
    return inputs


def instances_to_pixels(
    instances: Any,
    image_shape: Sequence[int],
    decode_b64: DecodeB64,
    max_rows: int,
    input_name: str | None = None,
) -> np.ndarray:
    """Row-format instances: nested pixel arrays, ``{"b64": ...}`` images, or either named by
    the model's input (``input_name``), as one uint8 batch."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"{len(instances)} instances, more than the limit of {max_rows}")
    if input_name is not None:
        instances = [_unnamed(x, input_name, f"instance {i}") for i, x in enumerate(instances)]
    shape = list(image_shape)
    rows: list[np.ndarray | None] = []
    encoded: list[tuple[str, str]] = []  # the b64 images, decoded together below
    for i, instance in enumerate(instances):
        where = f"instance {i}"
        if isinstance(instance, Mapping):
            b64 = instance.get("b64")
            if not isinstance(b64, str):
                raise UnprocessableInput(f"{where}: an object instance needs a 'b64' string")
            encoded.append((b64, where))
            rows.append(None)
        elif isinstance(instance, list | np.ndarray):  # ndarray: ``loads_object`` made it
            rows.append(array_from_json(instance, "UINT8", shape, where, nested=True))
        else:
            raise UnprocessableInput(
                f'{where}: expected a {"x".join(map(str, shape))} pixel array or {{"b64": ...}}'
            )
    images = iter(decode_b64(encoded) if encoded else [])
    return np.stack([next(images) if row is None else row for row in rows])
