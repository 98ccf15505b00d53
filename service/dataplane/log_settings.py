"""Triton's logging extension (``/v2/logging``, gRPC ``LogSettings``): which log levels the
service writes, read and changed at run time. ``log_verbose_level`` above 0 adds DEBUG lines;
``log_info``, ``log_warning`` and ``log_error`` switch each level on or off (a filter on the
root logger's handlers drops the switched-off ones). ``log_file`` and ``log_format`` are fixed
at start (stderr, ``LOG_FORMAT``): a change to them is refused."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from service.core.errors import InvalidInput

SWITCHES = {"log_info": logging.INFO, "log_warning": logging.WARNING, "log_error": logging.ERROR}
FIXED = ("log_file", "log_format")
MAX_VERBOSE_LEVEL = 2**32 - 1  # Triton's uint32


class LevelSwitch(logging.Filter):
    """Drops records of the switched-off levels (each level up to the next one)."""

    def __init__(self) -> None:
        super().__init__()
        self.off: frozenset[int] = frozenset()  # the switched-off levels among SWITCHES

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.off:
            return True
        band = max((lv for lv in SWITCHES.values() if lv <= record.levelno), default=0)
        return band not in self.off


class LogSettings:
    """The service's log switches; one per data plane, applied to the root logger."""

    def __init__(self, log_level: str, log_format: str) -> None:
        level = logging.getLevelName(log_level.upper())
        self._values: dict[str, Any] = {
            "log_file": "",  # stderr
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": log_format,
        }
        self._switch = LevelSwitch()
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        return dict(self._values)

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (any of the fields; all checked before any is applied); the
        settings now in force."""
        checked = {name: self._checked(name, value) for name, value in changes.items()}
        with self._lock:
            self._values.update(checked)
            self._apply()
            return dict(self._values)

    def _checked(self, name: str, value: Any) -> Any:
        if name in SWITCHES:
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be a boolean")
            return value
        if name == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput("log_verbose_level must be an integer")
            if not 0 <= value <= MAX_VERBOSE_LEVEL:
                raise InvalidInput(f"log_verbose_level must be 0 to {MAX_VERBOSE_LEVEL}")
            return value
        if name in FIXED:
            if value != self._values[name]:
                raise InvalidInput(
                    f"{name} cannot be changed at run time (logs go to stderr, as LOG_FORMAT "
                    f"says); it is {self._values[name]!r}"
                )
            return value
        raise InvalidInput(f"unknown log setting {name[:64]!r}")

    def _apply(self) -> None:
        """The root logger's level and the handlers' switch, from the values."""
        values = self._values
        on = [lv for name, lv in SWITCHES.items() if values[name]]
        lowest = logging.DEBUG if values["log_verbose_level"] > 0 else min(on, default=100)
        self._switch.off = frozenset(lv for name, lv in SWITCHES.items() if not values[name])
        root = logging.getLogger()
        root.setLevel(lowest)
        for handler in root.handlers:
            if self._switch not in handler.filters:
                handler.addFilter(self._switch)
