"""Triton's trace extension (``/v2[/models/{name}]/trace/setting``, gRPC ``TraceSetting``) in
its OpenTelemetry mode: ``trace_level`` (``OFF`` or ``TIMESTAMPS``), ``trace_rate`` (every N-th
request is traced), ``trace_count`` (how many more traces; -1: no end), global or per model (a
model's ``null`` value falls back to the global one). ``trace_mode`` is ``opentelemetry``;
``trace_file`` and ``log_frequency`` belong to Triton's own mode and cannot be set.

Tracing starts off unless ``OTEL_TRACES_EXPORTER`` names an exporter (not ``none``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from service.core.errors import InvalidInput
from service.engine import tracing
from service.engine.tracing import asgi_carrier, grpc_carrier, step

__all__ = ["TraceSettings", "asgi_carrier", "grpc_carrier", "step"]

LEVELS = ("OFF", "TIMESTAMPS")
FIXED = {"trace_mode": "opentelemetry", "trace_file": "", "log_frequency": "0"}
MAX_RATE = 2**31 - 1
MAX_NAME = 128
_UNTRACED: AbstractContextManager[Any] = nullcontext()


def _initial_level() -> list[str]:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return ["TIMESTAMPS"] if exporter not in ("", "none") and not disabled else ["OFF"]


class TraceSettings:
    """The trace settings in force, global and per model, and the sampling they decide."""

    def __init__(self) -> None:
        self._global: dict[str, Any] = {"trace_level": _initial_level(), "trace_rate": 1000,
                                        "trace_count": -1}  # fmt: skip
        self._models: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, int] = {}  # requests counted towards trace_rate, per scope
        self._lock = threading.Lock()
        self._apply()

    def get(self, model: str | None = None) -> dict[str, Any]:
        """Triton's JSON shape: every value a string, ``trace_level`` a list of them."""
        values = {**self._global, **self._models.get(model or "", {})}
        shown = {k: [*v] if k == "trace_level" else str(v) for k, v in values.items()}
        return {**shown, **FIXED}

    def update(self, changes: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
        """Apply ``changes`` (all checked first); a ``None`` value clears a model's own value
        (or resets a global one). The settings now in force for ``model``."""
        checked = {k: None if v is None else _checked(k, v) for k, v in changes.items()}
        checked = {k: v for k, v in checked.items() if k not in FIXED}
        with self._lock:
            if model:
                if len(model) > MAX_NAME:
                    raise InvalidInput("model name too long")
                own = self._models.setdefault(model, {})
                for key, value in checked.items():
                    if value is None:
                        own.pop(key, None)
                    else:
                        own[key] = value
            else:
                defaults = {"trace_level": ["OFF"], "trace_rate": 1000, "trace_count": -1}
                for key, value in checked.items():
                    self._global[key] = defaults[key] if value is None else value
            self._seen.clear()
            self._apply()
        return self.get(model)

    def _apply(self) -> None:
        scopes = [self._global, *self._models.values()]
        tracing.switch(any(s.get("trace_level", ["OFF"]) != ["OFF"] for s in scopes))

    def request(self, model: str, carrier: Mapping[str, str]) -> AbstractContextManager[Any]:
        """The request's span if this request is sampled (``trace_rate``, ``trace_count``)."""
        if tracing.TRACER is None or not self._sampled(model):
            return _UNTRACED
        return tracing.request_span(model, carrier)

    def close(self, timeout_s: float) -> None:
        """The spans still queued exported, for at most ``timeout_s`` (``tracing.close``)."""
        tracing.close(timeout_s)

    def _sampled(self, model: str) -> bool:
        with self._lock:
            own = self._models.get(model, {})
            scope = model if own else ""  # a model with settings of its own counts apart
            values = {**self._global, **own}
            if values["trace_level"] == ["OFF"] or values["trace_count"] == 0:
                return False
            seen = self._seen[scope] = self._seen.get(scope, 0) + 1
            if (seen - 1) % values["trace_rate"]:
                return False
            if values["trace_count"] > 0:
                target = own if "trace_count" in own else self._global
                target["trace_count"] = values["trace_count"] - 1
            return True


def _number(key: str, value: Any, low: int, high: int) -> int:
    text = value[0] if isinstance(value, list) and len(value) == 1 else value
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidInput(f"{key} must be a number (as a string)")
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{key} must be a number, not {str(text)[:32]!r}") from None
    if not low <= number <= high:
        raise InvalidInput(f"{key} must be {low} to {high}")
    return number


def _checked(key: str, value: Any) -> Any:
    if key == "trace_level":
        levels = value if isinstance(value, list) else [value]
        if not levels or not all(isinstance(v, str) for v in levels):
            raise InvalidInput("trace_level must be a list of levels: OFF or TIMESTAMPS")
        upper = sorted({v.upper() for v in levels})
        if any(v not in LEVELS for v in upper) or ("OFF" in upper and len(upper) > 1):
            raise InvalidInput(f"trace_level {levels[:4]!r}: OFF or TIMESTAMPS (TENSORS: no)")
        return upper
    if key == "trace_rate":
        return _number(key, value, 1, MAX_RATE)
    if key == "trace_count":
        return _number(key, value, -1, MAX_RATE)
    if key in FIXED:
        shown = value[0] if isinstance(value, list) and len(value) == 1 else value
        if str(shown) != FIXED[key]:
            raise InvalidInput(
                f"{key} cannot be set: tracing is OpenTelemetry's (configured by OTEL_* "
                f"variables); it is {FIXED[key]!r}"
            )
        return None
    raise InvalidInput(f"unknown trace setting {str(key)[:64]!r}")
