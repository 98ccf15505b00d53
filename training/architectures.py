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


def _conv_bn(filters: int) -> list[dict[str, Any]]:
    """3x3 'same' convolution without bias, batch norm, GELU: the lecture's toolbox per layer."""
    return [
        {"type": "conv2d", "filters": filters, "kernel": 3, "padding": "same", "bias": False},
        {"type": "batch_norm"},
        {"type": "activation", "fn": "gelu"},
    ]


def _block(filters: int) -> list[dict[str, Any]]:
    """Two conv/BN/GELU layers with a 2x2 max pool after the first (airbench's block shape)."""
    first, second = _conv_bn(filters), _conv_bn(filters)
    return [first[0], {"type": "max_pool", "pool": 2}, *first[1:], *second]


# A stronger CNN from the lecture's own toolbox (issue 8): widths 32-64-128-256, about 86 M
# multiply-adds and 1.2 M parameters per image, sized for CPU training and >= 2,000 images/s.
CIFAR_BN: list[dict[str, Any]] = [
    *_conv_bn(32),  # (32, 32, 32)
    *_block(64),  # (16, 16, 64)
    *_block(128),  # (8, 8, 128)
    *_block(256),  # (4, 4, 256)
    {"type": "max_pool", "pool": 4},  # (1, 1, 256)
    {"type": "flatten"},  # (256,)
    {"type": "dense", "units": 10},  # (10,) logits
]

# The same blocks behind a frozen whitening layer (airbench's first layer): a 2x2 convolution
# set before training to the PCA whitening of the training images' 2x2 patches (12 directions
# and their negatives), so the first trained layer sees decorrelated, unit-variance inputs. The
# 'valid' 2x2 window makes the maps 31, 15, 7 and 3 pixels wide; about 66 M multiply-adds.
CIFAR_WHITEN: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 24, "kernel": 2, "init": "whiten", "trainable": False},
    {"type": "activation", "fn": "gelu"},  # (31, 31, 24)
    *_block(64),  # (15, 15, 64)
    *_block(128),  # (7, 7, 128)
    *_block(256),  # (3, 3, 256)
    {"type": "max_pool", "pool": 3},  # (1, 1, 256)
    {"type": "flatten"},  # (256,)
    {"type": "dense", "units": 10},  # (10,) logits
]


def _block94(filters: int, init: str = "dirac") -> list[dict[str, Any]]:
    """airbench's block: conv, 2x2 max pool, BN, GELU, conv, BN, GELU; convolutions start as a
    partial identity (``init=""``: PyTorch's default instead), batch norms learn a bias but no
    scale and follow the batch closely."""
    conv: dict[str, Any] = {
        "type": "conv2d", "filters": filters, "kernel": 3, "padding": "same", "bias": False,
    }  # fmt: skip
    if init:
        conv["init"] = init
    # airbench's batch-norm momentum 0.6 is the share of the old statistics (Keras' convention);
    # PyTorch's momentum is the share of the new batch: 1 - 0.6.
    norm = {"type": "batch_norm", "scale": False, "momentum": 0.4, "eps": 1e-12}
    gelu = {"type": "activation", "fn": "gelu"}
    return [conv, {"type": "max_pool", "pool": 2}, norm, gelu, {**conv}, {**norm}, {**gelu}]


# airbench94's network (Jordan 2024, arXiv 2404.00498): the frozen 2x2 whitening layer (its
# bias may be trained for a few epochs: --whiten-bias-epochs), three blocks of 64-256-256
# filters, and a linear head without bias whose logits are scaled by 1/9. About 118 M
# multiply-adds per image (one view; the exported graph multiplies that by its --tta views).
def _cifar_94(whiten: bool = True, dirac: bool = True) -> list[dict[str, Any]]:
    """airbench94's network; ``whiten`` and ``dirac`` off give the ablations' variants."""
    stem: dict[str, Any] = {"type": "conv2d", "filters": 24, "kernel": 2}
    if whiten:
        stem.update(init="whiten", trainable=False)
    init = "dirac" if dirac else ""
    return [
        stem,
        {"type": "activation", "fn": "gelu"},  # (31, 31, 24)
        *_block94(64, init),  # (15, 15, 64)
        *_block94(256, init),  # (7, 7, 256)
        *_block94(256, init),  # (3, 3, 256)
        {"type": "max_pool", "pool": 3},  # (1, 1, 256)
        {"type": "flatten"},  # (256,)
        {"type": "dense", "units": 10, "bias": False, "output_scale": 1 / 9},  # (10,) logits
    ]


CIFAR_94 = _cifar_94()

# Two ablations of the airbench recipe (training/recipes.py: ABLATIONS) need another network:
# every convolution from PyTorch's default start instead of Dirac's partial identity, and the
# 2x2 stem trained from a random start like every other convolution instead of frozen whitening.
CIFAR_94_NO_DIRAC = _cifar_94(dirac=False)
CIFAR_94_NO_WHITENING = _cifar_94(whiten=False)

ARCHITECTURES: dict[str, list[dict[str, Any]]] = {
    "lecture": LECTURE,
    "lecture_bn": LECTURE_BN,
    "cifar_bn": CIFAR_BN,
    "cifar_whiten": CIFAR_WHITEN,
    "cifar_94": CIFAR_94,
    "cifar_94_no_dirac": CIFAR_94_NO_DIRAC,
    "cifar_94_no_whitening": CIFAR_94_NO_WHITENING,
}
