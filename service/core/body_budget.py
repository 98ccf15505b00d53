"""The bytes of request bodies one process holds at once, bounded: each request's body counts
from the moment its bytes arrive until its answer is sent. A per-request limit alone lets many
clients together hold more than the memory there is (4,096 connections of 64 MiB each); this sum
is what keeps them within it. Bytes count as they are received, never as declared, so a client
that announces a large body and trickles it holds only what it has sent.

Large bodies stop short of the whole budget: the last ``1 / RESERVED_SHARE`` of it is kept for
small ones (up to ``SMALL_BODY_BYTES`` each), so that a few clients holding large uploads turn
away other large uploads, never the small requests most traffic is.

Answers count too, from when they are made until they are sent: a model whose outputs are
larger than its inputs answered ten clients that never read, 4 kB sent, with 690 MB held for 30
s (REST) or 5.5 minutes (gRPC, until the connection's age); small answers, uncounted, could
still add up to 1 MiB times every gRPC call a client may hold open."""

from __future__ import annotations

from service.core.errors import BodyBudgetFull

# A body of up to this many bytes is small (16 FP32 images in JSON, 340 UINT8 ones in binary).
SMALL_BODY_BYTES = 1 << 20
RESERVED_SHARE = 8  # large bodies may hold all but an eighth of the budget
# Answers of up to this many bytes are counted but never refused: a health check, metadata, a
# classifier's answer are served whatever the budget holds (a full budget must not fail probes).
UNREFUSED_ANSWER_BYTES = 64 * 1024


def large_body_room(limit: int) -> int:
    """The bytes large bodies may hold together under a budget of ``limit``."""
    return limit - limit // RESERVED_SHARE


def least_budget(largest_body: int) -> int:
    """The smallest budget that holds one body of ``largest_body`` bytes (a large one in the
    large bodies' room)."""
    if largest_body <= SMALL_BODY_BYTES:
        return largest_body
    least = -(-largest_body * RESERVED_SHARE // (RESERVED_SHARE - 1))
    while large_body_room(least - 1) >= largest_body:
        least -= 1
    return least


class BodyBudget:
    """Bytes of request bodies held in one process; ``limit`` 0 is no limit. Used from the event
    loop only (REST and gRPC share it), so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.large_room = large_body_room(limit)
        self.held = 0

    def refusal(self, size: int, body: int) -> BodyBudgetFull | None:
        """The error for ``size`` more bytes of a body then ``body`` bytes long if they would
        pass what the budget has room for now, else None (a body's declared length is checked
        so, before any of it is read, and then taken as it comes)."""
        room = self.limit if body <= SMALL_BODY_BYTES else self.large_room
        if self.limit and self.held + size > room:
            return BodyBudgetFull(
                f"the server holds its maximum of {self.limit} bytes of request bodies; "
                "retry shortly"
            )
        return None

    def take(self, size: int, body: int) -> None:
        """Count ``size`` more bytes of a body then ``body`` bytes long, or raise
        ``BodyBudgetFull`` (counting nothing)."""
        error = self.refusal(size, body)
        if error is not None:
            raise error
        self.held += size

    def answer_refusal(self, size: int) -> BodyBudgetFull | None:
        """The error for an answer of ``size`` bytes if the budget has no room for it now, else
        None: a small answer may use the whole budget, a large one the large bodies' room; one
        of up to ``UNREFUSED_ANSWER_BYTES`` is never refused (counted all the same). One larger
        than the large room is let through while nothing large is held (so it is sent, one at a
        time), rather than refused for good."""
        room = self.limit if size <= SMALL_BODY_BYTES else self.large_room
        if not self.limit or size <= UNREFUSED_ANSWER_BYTES or self.held + size <= room:
            return None
        if size > self.large_room and self.held <= self.limit - self.large_room:
            return None
        return BodyBudgetFull(
            f"the answer is {size} bytes and the server holds its maximum of {self.limit} bytes "
            "of request bodies and unsent answers (MAX_BODY_BYTES_IN_FLIGHT); retry shortly"
        )

    def take_answer(self, size: int) -> int:
        """Count an answer of ``size`` bytes until it is sent (``give`` it then), or raise
        ``BodyBudgetFull``; the bytes counted."""
        error = self.answer_refusal(size)
        if error is not None:
            raise error
        self.held += size
        return size

    def give(self, size: int) -> None:
        """``size`` bytes taken earlier are no longer held (their request was answered)."""
        self.held -= size
