"""The explorer's JSON body (``POST /v1/models/{name}/activations``): one image, as ``:predict``
takes an instance, and the layers asked for. Apart from its route so that the largest bodies can
be decoded in the work pool's child process, which need not import the web app for it."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from service.api.images import ImageLimits, decode_b64_images
from service.api.rest.http_io import validated_body
from service.api.rest.json_wire import loads_object
from service.api.rest.predict import instances_to_pixels
from service.core.errors import InvalidInput, UnprocessableInput
from service.core.limits import check_json_values
from service.core.shapes import MAX_LAYERS


class ActivationsRequest(BaseModel):
    instances: list[Any] = Field(
        description='One image: a 32x32x3 nested pixel array or {"b64": "<base64 image>"}.'
    )
    layer: str | Annotated[list[str], Field(max_length=MAX_LAYERS)] | None = Field(
        None, description="Layer name(s); none: every conv and pool layer."
    )


ACTIVATIONS_FIELDS = frozenset(ActivationsRequest.model_fields)  # what ``loads_object`` converts


def layer_names(value: Any, where: str) -> list[str]:
    """The layers a body or form names: one name or a list of them (empty ones dropped)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput(f"{where} must be a layer name or a list of them, got {value!r}")
    return [n for n in names if n]


def decode_activations_body(
    raw: bytes, shape: tuple[int, int, int], limits: ImageLimits, count_values: bool = True
) -> tuple[np.ndarray, list[str]]:
    """The body's one image as uint8 pixels, and the layer names it gives; with
    ``count_values``, refused first if it holds more values than one image
    (``check_json_values``)."""
    if count_values:
        check_json_values(raw, math.prod(shape), f"one image of {list(shape)}")
    b64 = functools.partial(decode_b64_images, size=shape[:2], limits=limits)
    body = validated_body(ActivationsRequest, loads_object(raw, ACTIVATIONS_FIELDS))
    if len(body.instances) != 1:
        raise UnprocessableInput(
            f"'instances' must hold exactly one image, got {len(body.instances)}"
        )
    pixels = instances_to_pixels(body.instances, shape, b64, 1)
    return pixels[0], layer_names(body.layer, "'layer'")
