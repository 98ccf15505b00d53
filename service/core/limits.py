"""What one request may ask of the server, on every wire (JSON, the binary extension, gRPC).

Each limit is checked before the work it bounds, so refusing a hostile request costs about what
reading it did: a body of 64,000 unknown keys or 100,000 tensors is refused on its counts, not
after looking at each one, and a shape is checked as Python integers before numpy sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from service.core.card import TensorSpec
from service.core.errors import InvalidInput, PayloadTooLarge, UnprocessableInput

# Keys of any one JSON object of a request: its top level, a tensor, an output, ``parameters``.
# The protocol's objects have at most six fields; the rest leaves room for clients' own.
MAX_OBJECT_KEYS = 64
MAX_TENSOR_NAME_CHARS = 4096  # an input's or output's name (a model naming a longer one is refused)
MAX_NAME_CHARS = 128  # a model's name (the repository's NAME_PATTERN): longer is no model's
# Input tensors, and requested outputs, of one request (the models here take one and give two).
MAX_TENSORS = 64
# Dimensions of one tensor: an image batch has 4; numpy itself stops at 64.
MAX_RANK = 16
# Elements of one tensor, counting a zero dimension as 1 (so [0, 2^62, 2^62] is refused too:
# numpy cannot describe it even though it holds nothing).
MAX_ELEMENTS = 1 << 31
# Unknown top-level keys looked at for a likely misspelling (difflib) before the rest are
# ignored unseen; keys longer than this many characters cannot be close to a protocol field.
MAX_SUGGESTED_KEYS = 8
MAX_SUGGESTED_KEY_CHARS = 32
# Commas a JSON body of images may hold beyond one per pixel value: its other fields' own.
JSON_SEPARATOR_ALLOWANCE = 65_536


def check_object_size(count: int, where: str) -> None:
    """An object of ``count`` keys is refused (400) past ``MAX_OBJECT_KEYS``."""
    if count > MAX_OBJECT_KEYS:
        raise InvalidInput(f"{where} has {count} fields, more than the limit of {MAX_OBJECT_KEYS}")


def check_tensor_name(name: str, what: str) -> None:
    """A tensor's name (``what``: "an input", "an output") is refused (400) past
    ``MAX_TENSOR_NAME_CHARS``, before any message quotes it."""
    if len(name) > MAX_TENSOR_NAME_CHARS:
        raise InvalidInput(
            f"{what} is named in {len(name)} characters, more than the limit of "
            f"{MAX_TENSOR_NAME_CHARS}"
        )


def check_tensor_count(count: int, what: str) -> None:
    """A request of ``count`` inputs or outputs (``what``) is refused (400) past ``MAX_TENSORS``."""
    if count > MAX_TENSORS:
        raise InvalidInput(f"{count} {what}, more than the limit of {MAX_TENSORS}")


def value_bounds(
    inputs: Sequence[TensorSpec], batched: bool, max_rows: int, bytes_elements: bool = False
) -> dict[str, int]:
    """The most values each input of a model can take in one request (``max_rows`` rows of it),
    by name; an input with an open axis besides the batch's has no bound of the model's, only
    the element limit (``MAX_ELEMENTS``). With ``bytes_elements``, the most BYTES elements
    instead: for an input of another datatype one a row (an image classifier's images sent as
    encoded files), not one a value (a 330-byte request naming a shared memory region had 3.1
    million split for an image model)."""
    bounds = {}
    for spec in inputs:
        if bytes_elements and spec.datatype != "BYTES":
            bounds[spec.name] = max_rows if batched else 1
            continue
        dims = spec.shape[1:] if batched else spec.shape
        if all(d >= 0 for d in dims):
            bounds[spec.name] = (max_rows if batched else 1) * math.prod(dims)
        else:
            bounds[spec.name] = MAX_ELEMENTS
    return bounds


def value_bound(bounds: Mapping[str, int], name: str) -> int | None:
    """What ``value_bounds`` allows an input called ``name``; one the model does not have (to
    be refused by name later) gets the largest (``MAX_ELEMENTS`` where some input is open)."""
    bound = bounds.get(name)
    if bound is not None or not bounds:
        return bound
    return max(bounds.values())


def checked_shape(
    dims: Sequence[object], where: str, max_rows: int, most: int | None = None
) -> list[int]:
    """``dims`` as a tensor shape: a list of at most ``MAX_RANK`` non-negative integers whose
    first is at most ``max_rows`` and whose product (zeros counted as 1) is at most
    ``MAX_ELEMENTS`` (and ``most``: what the model's input can take), all computed exactly in
    Python before numpy, or a decoder splitting BYTES element by element, is given it."""
    if len(dims) > MAX_RANK:
        raise InvalidInput(f"{where}.shape has {len(dims)} dimensions, more than {MAX_RANK}")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise InvalidInput(f"{where}.shape must be a list of integers")
    shape = [int(d) for d in dims if isinstance(d, int)]  # every one, as checked above
    if any(d < 0 for d in shape):
        raise UnprocessableInput(f"{where}.shape {shape} has a negative dimension")
    if shape and shape[0] > max_rows:
        raise PayloadTooLarge(f"{where}: {shape[0]} rows, more than the limit of {max_rows}")
    elements = math.prod(max(d, 1) for d in shape)
    if elements > MAX_ELEMENTS:
        raise PayloadTooLarge(f"{where}.shape {shape} is too large")
    if most is not None and elements > most:
        raise PayloadTooLarge(
            f"{where}.shape {shape} holds {elements} values, more than the model's input takes "
            f"in one request ({most})"
        )
    return shape


def check_json_values(body: bytes, most: int, what: str) -> None:
    """A JSON body of images is refused (413) before it is parsed when it holds more values than
    ``most`` (``what`` the request may carry). Counted by its commas: a nested array of n values
    has n - 1 of them, whatever its shape, and counting costs milliseconds where making numbers
    of tens of millions of values costs the decoder seconds."""
    separators = body.count(b",")
    if separators > most + JSON_SEPARATOR_ALLOWANCE:
        raise PayloadTooLarge(
            f"the body holds about {separators} values, more than {what} ({most}) need"
        )
