"""The loads ``python -m bench peers`` puts on each server: the same model files and the same
request bodies for PyTriton, this service and the raw ASGI ceiling."""

from __future__ import annotations

from dataclasses import dataclass

LECTURE = "cifar10_cnn"
BN = "cifar10_cnn_bn"
PROBABILITIES = ["probabilities"]  # what the peer returns; both servers are asked for it only


@dataclass(frozen=True)
class Workload:
    """One load: a model, its request body (the same bytes for both servers) and clients."""

    label: str
    model: str
    datatype: str  # FP32 or UINT8, JSON
    clients: int


WORKLOADS = [
    Workload("lecture model, FP32 JSON", LECTURE, "FP32", 1),
    Workload("lecture model, FP32 JSON", LECTURE, "FP32", 64),
    Workload("cifar10_cnn_bn, UINT8 JSON", BN, "UINT8", 64),
]
