"""JSON on the wire: orjson for answers and ordinary bodies, simdjson for the numbers of v2 infer
bodies (straight into numpy), and the rule for a body's fields (unknown ones ignored unless they
look misspelt)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import simdjson

from service.api.tensors import holds_strings
from service.core.errors import InvalidInput
from service.core.limits import (
    MAX_SUGGESTED_KEY_CHARS,
    MAX_SUGGESTED_KEYS,
    check_object_size,
    check_tensor_count,
)
from service.engine.dtypes import NUMPY_DTYPES
from service.engine.work_pool import TooHeavyForThisProcess, heavy_allowed

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
SLICE_VALUES = 65_536  # numbers of an array ``dumps_in_slices`` writes in one orjson call
# A body simdjson declines is read again by orjson, into Python objects: in place up to this
# size, past it only in the decoding child (``_read_again``).
READ_AGAIN_HERE_BYTES = 65_536


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=JSON_OPTIONS)


def dumps_in_slices(data: Any) -> bytes:
    """``dumps(data)``, its numpy arrays written ``SLICE_VALUES`` numbers at a time: orjson holds
    the interpreter for a whole call (239 ms for 30 MB of float32, 80 MB of JSON), so a pool
    thread writing a large answer this way lets the event loop in between slices. The pieces
    are joined once (each copy of 85 MB holds the interpreter about 25 ms)."""
    pieces: list[bytes] = []
    _write_in_slices(data, pieces)
    return b"".join(pieces)


def _write_in_slices(data: Any, out: list[bytes]) -> None:
    if isinstance(data, np.ndarray) and not data.dtype.hasobject and data.ndim:
        row = math.prod(data.shape[1:])
        out.append(b"[")
        if row > SLICE_VALUES:  # each row large itself
            for index, item in enumerate(data):
                out.append(b"," if index else b"")
                _write_in_slices(item, out)
        else:
            step = max(1, SLICE_VALUES // max(row, 1))
            for start in range(0, len(data), step):
                out.append((b"," if start else b"") + dumps(data[start : start + step])[1:-1])
        out.append(b"]")
    elif isinstance(data, dict):
        out.append(b"{")
        for index, (key, value) in enumerate(data.items()):
            out.append((b"," if index else b"") + dumps(str(key)) + b":")
            _write_in_slices(value, out)
        out.append(b"}")
    elif isinstance(data, list | tuple):
        out.append(b"[")
        for index, item in enumerate(data):
            out.append(b"," if index else b"")
            _write_in_slices(item, out)
        out.append(b"]")
    else:
        out.append(dumps(data))


def loads(body: bytes) -> Any:
    """Parse a JSON body; malformed JSON is a 400 naming the problem."""
    if not body:
        raise InvalidInput("the request body is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def loads_object(body: bytes, fields: frozenset[str] | None = None) -> Any:
    """Parse a JSON body whose top level should be an object, in steps the event loop can
    interleave with when it runs on the work pool: the top level's size is checked before any of
    it becomes Python objects, and the members of arrays two levels down (``instances``,
    ``inputs``) are converted one at a time, a nested array straight to numpy (what
    ``array_from_json`` makes of it), so a batch of pixel arrays never exists as millions of
    Python numbers at once (the collector's full scans of those held the loop for 200 ms).
    With ``fields``, a top-level key outside them keeps its name (for ``json_object``'s
    misspelling rule) but not its value, which nothing reads: 200,000 small objects under one
    such key cost 2.3 s of a pool thread to convert."""
    try:
        doc = simdjson.Parser().parse(body)
    except (ValueError, TypeError, RuntimeError):
        return _read_again(body)
    if not isinstance(doc, simdjson.Object):
        return None if isinstance(doc, simdjson.Array) else doc  # refused as "not an object"
    check_object_size(len(doc), "the body")
    return {
        key: _plain_in_steps(doc[key], 2) if fields is None or key in fields else None
        for key in _keys(doc, "the body")
    }


def _plain_in_steps(value: Any, levels: int) -> Any:
    """``_plain(value)``, converting the outer ``levels`` of arrays and objects member by member
    (a bounded amount of work per step)."""
    if levels <= 0:
        return _array_or_plain(value)
    if isinstance(value, simdjson.Array):
        return [_plain_in_steps(item, levels - 1) for item in value]
    if isinstance(value, simdjson.Object):
        check_object_size(len(value), "an object of the body")
        keys = _keys(value, "an object of the body")
        return {key: _plain_in_steps(value[key], levels - 1) for key in keys}
    return value


def _keys(value: Any, where: str) -> list[str]:
    """A lazily parsed object's keys; one holding a NUL character is refused (400), since
    simdjson cannot look it up again and no protocol field has one."""
    keys: list[str] = list(value.keys())
    if any("\x00" in key for key in keys):
        raise InvalidInput(f"{where} has a key holding a NUL character")
    return keys


def _array_or_plain(value: Any) -> Any:
    """A JSON array as the numpy array ``np.array`` makes of it (its Python values freed at
    once), or as plain Python if numpy refuses it (ragged); anything else as plain Python."""
    plain = _plain(value)
    if not isinstance(plain, list):
        return plain
    if not _all_numbers(value) and holds_strings(plain):
        # np.array would make one fixed-width array as wide as the longest string for every
        # element (a 200 kB body asking for gigabytes); ``array_from_json`` looks at the list
        return plain
    try:
        return np.array(plain)
    except (ValueError, TypeError):
        return plain  # ``array_from_json`` names what is wrong with it


def _all_numbers(value: Any) -> bool:
    """Whether a lazily parsed array holds only numbers, at any depth (simdjson's C pass)."""
    try:
        value.as_buffer(of_type="d")
    except (TypeError, ValueError):
        return False
    return True


def _plain(value: Any) -> Any:
    """A lazily parsed simdjson value as plain Python (what ``orjson.loads`` would give)."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _numbers(data: Any, datatype: Any) -> Any:
    """A flat JSON array of numbers straight into numpy (no Python number objects), or the
    plain list when it is anything else; ``array_from_json`` checks either the same way."""
    if not isinstance(data, simdjson.Array):
        return _plain(data)
    known = isinstance(datatype, str) and datatype in NUMPY_DTYPES
    kind = NUMPY_DTYPES[datatype].kind if known else ""
    if kind in ("i", "u", "f"):  # nesting is flattened row-major, as ``array_from_json`` does
        floats = kind == "f"
        try:
            buffer = data.as_buffer(of_type="d" if floats else "i")
        except (TypeError, ValueError):
            pass  # mixed, out of range or not numbers: the careful path names the problem
        else:
            return np.frombuffer(buffer, dtype=np.float64 if floats else np.int64)
    return data.as_list()


def lazy_document(body: bytes) -> Any:
    """simdjson's lazy view of ``body``, or None where simdjson declines it (malformed, or an
    integer over 64 bits): ``loads_infer_request`` then reads it with orjson."""
    try:
        return simdjson.Parser().parse(body)
    except (ValueError, TypeError, RuntimeError):
        return None


_UNPARSED = object()


def loads_infer_request(body: bytes, doc: Any = _UNPARSED) -> Any:
    """Parse a v2 infer body with tensor ``data`` as numpy arrays where they are flat numbers;
    ``doc``: ``lazy_document(body)``, where the caller has it already.

    Parsing 3,072 pixels through Python floats costs more than running the model on them, so
    simdjson hands the numbers over as one buffer; anything unusual takes ``loads``' path.
    Objects' and the inputs' sizes are checked (``service.core.limits``) before their members are
    looked at: a lookup in a lazily parsed object is a scan of its keys.
    """
    if doc is _UNPARSED:
        doc = lazy_document(body)
    if doc is None:
        return _read_again(body)
    try:
        return _from_simdjson(doc)
    except (ValueError, TypeError, RuntimeError, KeyError):
        return _read_again(body)


def _read_again(body: bytes) -> Any:
    """A body simdjson declined, read by orjson: it is malformed (orjson's message, with its
    place, is the clearer) or holds what simdjson does not take (an integer over 64 bits, which
    orjson reads as a float). orjson makes a Python object of every value at once, which holds
    the interpreter: one 3.9 MB body of pixel rows with one such integer held every other
    request 478 ms from a pool thread. Past ``READ_AGAIN_HERE_BYTES`` it is therefore read only
    where that may happen (``heavy_allowed``: the decoding child)."""
    if len(body) > READ_AGAIN_HERE_BYTES and not heavy_allowed():
        raise TooHeavyForThisProcess
    return loads(body)


def _from_simdjson(doc: Any) -> Any:
    if not isinstance(doc, simdjson.Object):
        return None if isinstance(doc, simdjson.Array) else doc  # refused as "not an object"
    check_object_size(len(doc), "the request")
    request = {key: _plain(doc[key]) for key in _keys(doc, "the request") if key != "inputs"}
    inputs = doc.get("inputs")
    if isinstance(inputs, simdjson.Array):
        check_tensor_count(len(inputs), "inputs")
        tensors: list[Any] = []
        for index in range(len(inputs)):
            tensor = inputs[index]
            if not isinstance(tensor, simdjson.Object):
                tensors.append(_plain(tensor))
                continue
            check_object_size(len(tensor), f"inputs[{index}]")
            keys = _keys(tensor, f"inputs[{index}]")
            item = {key: _plain(tensor[key]) for key in keys if key != "data"}
            if "data" in tensor:
                item["data"] = _numbers(tensor["data"], item.get("datatype"))
            tensors.append(item)
        request["inputs"] = tensors
    elif inputs is not None:
        request["inputs"] = _plain(inputs)
    return request


def json_object(
    value: Any, where: str, fields: frozenset[str] | None = None, *, ignore_unknown: bool = False
) -> Mapping[str, Any]:
    """``value`` as a JSON object; with ``fields``, a key outside them is a 400 (a misspelt
    ``"shapes"`` would otherwise be ignored without a word).

    ``ignore_unknown`` (request bodies' top level) lets other keys through, as Triton and MLServer
    do, so a client that adds a field of its own is not broken; a key that looks like a misspelt
    protocol field (``"input"``, ``"output"``, ``"Top_K"``) is still a 400, since ignoring it
    would change the answer without a word.
    """
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} must be a JSON object")
    check_object_size(len(value), where)
    if fields is None or fields.issuperset(value):
        return value
    unknown = sorted(str(k) for k in value if k not in fields)
    if ignore_unknown:
        # A handful of keys is looked at for a misspelling; past that they are ignored unseen.
        short = [key for key in unknown if len(key) <= MAX_SUGGESTED_KEY_CHARS]
        unknown = [
            key for key in short[:MAX_SUGGESTED_KEYS] if misspelt_field(key, fields) is not None
        ]
        if not unknown:
            return value
        guesses = ", ".join(f"{key!r} -> {misspelt_field(key, fields)!r}" for key in unknown)
        raise InvalidInput(
            f"{where} has unknown field(s) {unknown} that look like misspelt ones ({guesses}); "
            f"expected {', '.join(sorted(fields))} (other fields are ignored)"
        )
    shown = [key[:MAX_SUGGESTED_KEY_CHARS] for key in unknown[:MAX_SUGGESTED_KEYS]]
    more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
    raise InvalidInput(
        f"{where} has unknown field(s) {shown}{more}; expected {', '.join(sorted(fields))}"
    )


def misspelt_field(key: str, fields: frozenset[str]) -> str | None:
    """The protocol field ``key`` most likely misspells (case, a letter, ``_``), or None."""
    if len(key) > MAX_SUGGESTED_KEY_CHARS:  # too long to be close to any protocol field
        return None
    lowered = {name.lower(): name for name in fields}
    close = difflib.get_close_matches(key.lower().replace("-", "_"), lowered, n=1, cutoff=0.75)
    return lowered[close[0]] if close else None
