"""Callbacks due at event-loop times, all served by one timer per loop: a request body's timeout
(``BodyLimit``) is nearly always dropped unreached, and a timer of its own, made and cancelled on
every request, cost a request about 5 us on uvloop (docs/benchmarks.md, "One client's p50"), while
adding and dropping a deadline here is a dict insert and a delete; the loop's one timer runs only
when the earliest deadline may have come."""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable


class Deadlines:
    """One event loop's deadlines (``for_running_loop``): ``add`` returns a key for ``drop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, when: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` on the loop once its clock (``loop.time()``) reaches ``when``, unless
        dropped first."""
        key = next(self._keys)
        self._due[key] = (when, callback)
        if self._timer is None or when < self._timer_at:
            self._arm(when)
        return key

    def drop(self, key: int) -> None:
        """The deadline is not wanted any more (the timer stays: it finds nothing due then)."""
        self._due.pop(key, None)

    def __len__(self) -> int:
        return len(self._due)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        """Run what is due, then wait for the earliest of the rest (if any)."""
        self._timer = None
        now = self._loop.time()  # a timer run early finds nothing due and waits again
        due = [key for key, (when, _) in self._due.items() if when <= now]
        try:
            for key in due:
                entry = self._due.pop(key, None)  # None: an earlier callback dropped it
                if entry is not None:
                    entry[1]()
        finally:  # even past a callback's error, the rest keep their timer
            if self._due:
                self._arm(min(when for when, _ in self._due.values()))


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def for_running_loop() -> Deadlines:
    """The running loop's deadlines (each loop its own: tests run servers on several). Meant
    for a few lengths that are each added in time order (the body timeout, the 50 ms disconnect
    watch): a later deadline of one length never re-arms the timer, and a short one added while
    it waits for a long one re-arms it once, after which the short ones keep it. (At 2 ms the
    watch kept a timer of its own: the shared one would have fired and re-armed every 2 ms.)"""
    loop = asyncio.get_running_loop()
    deadlines = _loops.get(loop)
    if deadlines is None:
        deadlines = _loops[loop] = Deadlines(loop)
    return deadlines
