"""Architectures as data: lists of layer specs, like a Keras Sequential config.

No torch here, so the service's tests and tools can read the same specs.
"""

from __future__ import annotations

from typing import Any

INPUT_SHAPE = (32, 32, 3)  # (H, W, C): CIFAR-10 RGB images

# The lecture's CNN: 122,570 parameters.
LECTURE: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 32, "kernel": 3, "activation": "relu"},  # (30, 30, 32)
    {"type": "max_pool", "pool": 2},  # (15, 15, 32)
    {"type": "conv2d", "filters": 64, "kernel": 3, "activation": "relu"},  # (13, 13, 64)
    {"type": "max_pool", "pool": 2},  # (6, 6, 64)
    {"type": "conv2d", "filters": 64, "kernel": 3, "activation": "relu"},  # (4, 4, 64)
    {"type": "flatten"},  # (1024,)
    {"type": "dense", "units": 64, "activation": "relu"},  # (64,)
    {"type": "dense", "units": 10},  # (10,) logits
]

# The lecture's regularization section applied: batch norm before each activation, dropout
# before the classifier. A config away from the seed, as the issue asks.
LECTURE_BN: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 32, "kernel": 3, "bias": False},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "relu"},
    {"type": "max_pool", "pool": 2},
    {"type": "conv2d", "filters": 64, "kernel": 3, "bias": False},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "relu"},
    {"type": "max_pool", "pool": 2},
    {"type": "conv2d", "filters": 64, "kernel": 3, "bias": False},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "relu"},
    {"type": "flatten"},
    {"type": "dropout", "rate": 0.3},
    {"type": "dense", "units": 64, "activation": "relu"},
    {"type": "dense", "units": 10},
]

ARCHITECTURES: dict[str, list[dict[str, Any]]] = {"lecture": LECTURE, "lecture_bn": LECTURE_BN}
