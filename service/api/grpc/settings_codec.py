"""``LogSettings`` and ``TraceSetting`` messages <-> the data plane's settings dictionaries (the
same ones ``/v2/logging`` and ``/v2/trace/setting`` send as JSON)."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2

from service.core.errors import InvalidInput


def log_changes(request: Any) -> dict[str, Any]:
    """A ``LogSettingsRequest``'s settings as plain values (an empty one reads them)."""
    changes: dict[str, Any] = {}
    for key, value in request.settings.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput(f"log setting {key[:64]!r} has no value")
        changes[key] = getattr(value, kind)
    return changes


def log_response(values: dict[str, Any]) -> Any:
    response = service_pb2.LogSettingsResponse()
    for key, value in values.items():
        entry = response.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = str(value)
    return response


def trace_changes(request: Any) -> dict[str, Any]:
    """A ``TraceSettingRequest``'s settings: a list of strings each, None where it has none
    (tritonclient's way of clearing a setting)."""
    return {key: list(value.value) or None for key, value in request.settings.items()}


def trace_response(values: dict[str, Any]) -> Any:
    response = service_pb2.TraceSettingResponse()
    for key, value in values.items():
        response.settings[key].value.extend(value if isinstance(value, list) else [value])
    return response
