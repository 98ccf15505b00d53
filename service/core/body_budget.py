"""The bytes of request bodies one process holds at once, bounded: each request's body counts
from the moment its bytes arrive until its answer is sent. A per-request limit alone lets many
clients together hold more than the memory there is (4,096 connections of 64 MiB each); this sum
is what keeps them within it. Bytes count as they are received, never as declared, so a client
that announces a large body and trickles it holds only what it has sent."""

from __future__ import annotations

from service.core.errors import BodyBudgetFull


class BodyBudget:
    """Bytes of request bodies held in one process; ``limit`` 0 is no limit. Used from the event
    loop only (REST and gRPC share it), so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def refusal(self, size: int) -> BodyBudgetFull | None:
        """The error for ``size`` more bytes if they would pass the limit now, else None (a
        body's declared length is checked so, before any of it is read, and taken as it comes)."""
        if self.limit and self.held + size > self.limit:
            return BodyBudgetFull(
                f"the server holds its maximum of {self.limit} bytes of request bodies; "
                "retry shortly"
            )
        return None

    def take(self, size: int) -> None:
        """Count ``size`` more bytes held, or raise ``BodyBudgetFull`` (counting nothing)."""
        error = self.refusal(size)
        if error is not None:
            raise error
        self.held += size

    def give(self, size: int) -> None:
        """``size`` bytes taken earlier are no longer held (their request was answered)."""
        self.held -= size
