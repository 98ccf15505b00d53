"""Log lines any client can cause, written at most once per interval each, with how many came
meanwhile: a flood of bad requests must not flood the log too (uvicorn wrote one line for each
malformed request line: one client's 311 kB of them grew the log by 1.6 MB in 4 s)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_S = 10.0  # the least time between two lines of the same kind
MAX_KINDS = 256  # kinds remembered; past it, new kinds share one (so lines stay bounded)
OTHER_KINDS = "\0other kinds"  # the kind of every kind past MAX_KINDS


class ThrottledLog:
    """``logger`` with its ``warning`` and ``info`` throttled per kind: the message (its format
    string), or ``key`` where one format string covers several kinds; every other call as it
    was (uvicorn's protocol reads ``level`` and calls ``log`` and ``error``)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._interval_s, self._clock = logger, interval_s, clock
        self._seen: dict[str, list[float]] = {}  # kind -> [since logged, when logged]
        self._lock = threading.Lock()  # the gRPC servicer's threads and the loop share one

    @property
    def level(self) -> int:
        return self._logger.level

    def warning(self, msg: str, *args: Any, key: str | None = None, **kwargs: Any) -> None:
        self._throttled(logging.WARNING, msg, args, key, kwargs)

    def info(self, msg: str, *args: Any, key: str | None = None, **kwargs: Any) -> None:
        self._throttled(logging.INFO, msg, args, key, kwargs)

    def _throttled(
        self, level: int, msg: str, args: tuple[Any, ...], key: str | None, kwargs: Any
    ) -> None:
        if not self._logger.isEnabledFor(level):
            return
        kind, now = key if key is not None else msg, self._clock()
        with self._lock:
            if kind not in self._seen and len(self._seen) >= MAX_KINDS:
                self._forget_quiet(now)
                if len(self._seen) >= MAX_KINDS:
                    kind = OTHER_KINDS
            entry = self._seen.get(kind)
            if entry is not None and now - entry[1] < self._interval_s:
                entry[0] += 1
                return
            missed = int(entry[0]) if entry is not None else 0
            self._seen[kind] = [0, now]
        more = f" ({missed} more since the last such line)" if missed else ""
        self._logger.log(level, msg + more, *args, **kwargs)

    def _forget_quiet(self, now: float) -> None:
        """Forget the kinds past their interval with nothing untold (they would log anew)."""
        for kind, (missed, when) in list(self._seen.items()):
            if not missed and now - when >= self._interval_s:
                del self._seen[kind]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)
