"""Triton's system shared memory extension over gRPC: a tensor's ``InferParameter`` map as the
plain values the data plane reads, and the region status message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tritonclient.grpc import service_pb2

from service.dataplane.shared_memory import PARAMETERS, RegionStatus, shared_memory_ref
from service.dataplane.types import SharedMemoryRef


def tensor_region(parameters: Any, where: str) -> SharedMemoryRef | None:
    """The region a tensor's parameters name (``shared_memory_*``), checked; None if none."""
    values: dict[str, Any] = {}
    for key in PARAMETERS:
        if key in parameters:
            parameter = parameters[key]
            choice = parameter.WhichOneof("parameter_choice")
            values[key] = getattr(parameter, choice) if choice else None
    return shared_memory_ref(values, where) if values else None


def set_region(parameters: Any, region: SharedMemoryRef) -> None:
    """An output's answer: the region it was written to and its true size (no contents)."""
    for key, value in region.parameters().items():
        if isinstance(value, str):
            parameters[key].string_param = value
        else:
            parameters[key].int64_param = value


def status_response(regions: Sequence[RegionStatus]) -> Any:
    message = service_pb2.SystemSharedMemoryStatusResponse
    return message(regions={r.name: message.RegionStatus(**vars(r)) for r in regions})
