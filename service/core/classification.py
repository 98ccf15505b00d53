"""Triton's classification extension on a requested output: the ``classification`` parameter
(tritonclient's ``class_count``), checked by one rule for REST and gRPC alike."""

from __future__ import annotations

from service.core.errors import InvalidInput

PARAMETER = "classification"  # the requested output's parameter, on both wires


def check_class_count(value: object, output: str) -> int:
    """``value`` as the number of classes to return; 400 naming the output unless it is a
    positive integer. A count past the output's size is not an error: Triton clamps it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = repr(value) if isinstance(value, int) else f"a {type(value).__name__}"
        raise InvalidInput(
            f"output {output!r}: classification must be a positive integer (the number of "
            f"classes to return), not {shown}"
        )
    return value
