"""Warnings any client can cause, logged at most once per interval each, with how many came
meanwhile: a flood of bad requests must not flood the log too (uvicorn wrote one line for each
malformed request line: one client's 311 kB of them grew the log by 1.6 MB in 4 s)."""

from __future__ import annotations

import logging
import time
from typing import Any

INTERVAL_S = 10.0  # the least time between two lines of the same warning
MAX_KINDS = 256  # warnings remembered; past it the memory starts again


class ThrottledLog:
    """``logger`` with its ``warning`` throttled per message (its format string); every other
    call as it was (uvicorn's protocol reads ``level`` and calls ``log`` and ``error``)."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S) -> None:
        self._logger, self._interval_s = logger, interval_s
        self._seen: dict[str, list[float]] = {}  # message -> [since logged, when logged]

    @property
    def level(self) -> int:
        return self._logger.level

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        entry = self._seen.get(msg)
        if entry is not None and now - entry[1] < self._interval_s:
            entry[0] += 1
            return
        missed = int(entry[0]) if entry is not None else 0
        if len(self._seen) >= MAX_KINDS:
            self._seen.clear()
        self._seen[msg] = [0, now]
        more = f" ({missed} more since the last such line)" if missed else ""
        self._logger.warning(msg + more, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)
