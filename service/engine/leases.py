"""Leases on runtimes: a model version a request takes stays open until the request ends, even
if a newer version is swapped in meanwhile (the repository retires the old one; it closes when
its last lease is released)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from service.engine.runtime import ModelRuntime

_held: ContextVar[list[ModelRuntime] | None] = ContextVar("held_runtimes", default=None)


@contextmanager
def lease_scope() -> Iterator[None]:
    """Runtimes that ``get`` hands out inside this scope (one request) stay open until it ends."""
    held: list[ModelRuntime] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        for runtime in held:
            runtime.release()


def held_runtimes() -> list[ModelRuntime] | None:
    """The current request's leases, or None outside ``lease_scope``."""
    return _held.get()
