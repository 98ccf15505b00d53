"""Leases on runtimes: a model version a request takes stays open until the request ends, even
if a newer version is swapped in meanwhile (the repository retires the old one; it closes when
its last lease is released)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

from service.engine.runtime import ModelRuntime

_held: ContextVar[list[ModelRuntime] | None] = ContextVar("held_runtimes", default=None)


class LeaseScope:
    """Runtimes that ``get`` hands out inside this scope (one request) stay open until it ends.
    A class, not a generator: it is entered once per request, on the hot path."""

    __slots__ = ("_held", "_token")

    def __enter__(self) -> None:
        self._held: list[ModelRuntime] = []
        self._token: Token[list[ModelRuntime] | None] = _held.set(self._held)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        _held.reset(self._token)
        for runtime in self._held:
            runtime.release()


def lease_scope() -> LeaseScope:
    """A scope for one request's leases (``with lease_scope(): ...``)."""
    return LeaseScope()


def held_runtimes() -> list[ModelRuntime] | None:
    """The current request's leases, or None outside ``lease_scope``."""
    return _held.get()
