"""A request's ``timeout`` parameter (Triton's schedule policy: microseconds it may wait queued),
checked the same way for REST's JSON and gRPC's ``InferParameter``."""

from __future__ import annotations

from service.core.errors import InvalidInput

MAX_TIMEOUT_US = 3_600_000_000  # an hour: longer is no timeout a client means


def check_timeout_us(value: object) -> int:
    """``value`` as whole microseconds, 0 to ``MAX_TIMEOUT_US``; 0 means the server's default."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(
            f"parameter 'timeout' must be an integer number of microseconds, not {value!r}"
        )
    if not 0 <= value <= MAX_TIMEOUT_US:
        raise InvalidInput(
            f"parameter 'timeout' {value} is outside 0..{MAX_TIMEOUT_US} microseconds"
        )
    return value
