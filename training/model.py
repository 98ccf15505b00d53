"""PyTorch models built from architectures declared as data (``training.architectures``).

The layer table comes from ``service.core.shapes`` (pure Python), so the service shows the same
numbers without torch; ``build_model`` walks that table to size each PyTorch layer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.core.errors import InvalidLayerSpec
from service.core.shapes import conv_padding, layer_table
from training.architectures import INPUT_SHAPE


def _activation(name: str | None) -> nn.Module | None:
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
    }
    if name is None or name == "linear":
        return None
    if name == "softmax":
        return nn.Softmax(dim=1)
    return table[name]()


def _with_activation(layer: nn.Module, activation: str | None) -> nn.Module:
    act = _activation(activation)
    return layer if act is None else nn.Sequential(layer, act)


def build_layers(
    layers: list[dict[str, Any]], input_shape: tuple[int, int, int] = INPUT_SHAPE
) -> nn.Sequential:
    """The layer stack as ``nn.Sequential`` with Keras' layer names (``conv2d_1``, ``dense``...).

    Works on NCHW float tensors; names carry into the ONNX graph's node names.
    """
    table = layer_table(input_shape, layers)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    shape: tuple[int, ...] = tuple(input_shape)
    for spec, row in zip(layers, table.rows, strict=True):
        kind = spec["type"]
        module: nn.Module
        if kind == "conv2d":
            h, w, c = shape
            f, s = int(spec["kernel"]), int(spec.get("stride", 1))
            (top, bottom), (left, right) = (
                conv_padding(spec, h, f, s, row.name),
                conv_padding(spec, w, f, s, row.name),
            )
            conv = nn.Conv2d(c, int(spec["filters"]), f, s, bias=bool(spec.get("bias", True)))
            conv.requires_grad_(bool(spec.get("trainable", True)))
            if top == bottom and left == right:
                conv.padding = (top, left)
                module = conv
            else:  # TensorFlow's 'same' puts the odd pixel after
                module = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
            module = _with_activation(module, spec.get("activation"))
        elif kind == "max_pool":
            module = nn.MaxPool2d(
                int(spec.get("pool", 2)), int(spec.get("stride", spec.get("pool", 2)))
            )
        elif kind == "avg_pool":
            module = nn.AvgPool2d(
                int(spec.get("pool", 2)), int(spec.get("stride", spec.get("pool", 2)))
            )
        elif kind == "flatten":
            module = nn.Flatten()
        elif kind == "dense":
            linear = nn.Linear(shape[0], int(spec["units"]), bias=bool(spec.get("bias", True)))
            module = _with_activation(linear, spec.get("activation"))
        elif kind == "dropout":
            module = nn.Dropout(float(spec.get("rate", 0.5)))
        elif kind == "batch_norm":
            module = nn.BatchNorm2d(shape[-1]) if len(shape) == 3 else nn.BatchNorm1d(shape[-1])
        elif kind == "activation":
            act = _activation(spec.get("fn"))
            module = act if act is not None else nn.Identity()
        else:  # layer_table has already refused unknown types
            raise InvalidLayerSpec(f"{row.name}: unsupported layer type {kind!r}")
        modules[row.name] = module
        shape = row.output_shape
    return nn.Sequential(modules)


class Classifier(nn.Module):
    """uint8 NHWC RGB pixels in, logits out: the preprocessing lives in the model (and its graph).

    Training feeds raw pixels through the same ``forward`` the export traces, so training and
    serving cannot disagree on scaling or layout.
    """

    def __init__(
        self, layers: list[dict[str, Any]], input_shape: tuple[int, int, int] = INPUT_SHAPE
    ):
        super().__init__()
        self.net = build_layers(layers, input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 32, 32) in [0, 1]
        return self.net(x)  # (N, 10)


class ExportedClassifier(nn.Module):
    """What goes into the ONNX file: logits and their softmax."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        return logits, torch.softmax(logits, dim=1)


def keras_init(model: nn.Module) -> None:
    """Keras' defaults: Glorot-uniform weights and zero biases for conv and dense layers.

    The lecture trained with these; PyTorch's own default (Kaiming-uniform, a=sqrt(5)) scored
    lower on this recipe here.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _conv_in(module: nn.Module) -> nn.Conv2d:
    """The convolution of a conv2d layer's module (it may sit in a Sequential with its padding
    or activation)."""
    if isinstance(module, nn.Conv2d):
        return module
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


@torch.no_grad()
def whitening_weights(
    images: torch.Tensor, kernel: int, eps: float = 5e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening of the ``kernel`` x ``kernel`` patches of ``images`` (N, C, H, W) in [0, 1].

    Returns conv weights (2 * C*k*k, C, k, k) and biases: each eigenvector of the centred patch
    covariance, scaled by 1/sqrt(eigenvalue + eps * mean variance), and its negative, so that
    a following GELU keeps both signs. The layer's outputs are then decorrelated with unit
    variance: the first layer starts where many epochs of training would take it (airbench).
    """
    c, d = images.shape[1], images.shape[1] * kernel * kernel
    total, outer, count = (
        torch.zeros(d, dtype=torch.float64),
        torch.zeros(d, d, dtype=torch.float64),
        0,
    )
    for chunk in images.split(500):  # a few MB of patches at a time
        patches = F.unfold(chunk.double(), kernel).transpose(1, 2).reshape(-1, d)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    scale = eps * covariance.diagonal().mean()
    basis = eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + scale)[:, None]  # (D, D)
    weight = torch.cat([basis, -basis]).reshape(-1, c, kernel, kernel)
    bias = -torch.cat([basis, -basis]) @ mean
    return weight.float(), bias.float()


def init_from_data(model: Classifier, layers: list[dict[str, Any]], images: np.ndarray) -> None:
    """Set the layers whose spec says ``"init": "whiten"`` from training images (uint8 NHWC).

    Only the first layer can be whitened: it is the one that sees the pixels.
    """
    for index, spec in enumerate(layers):
        if spec.get("init") is None:
            continue
        if spec.get("init") != "whiten" or spec["type"] != "conv2d" or index != 0:
            raise InvalidLayerSpec(
                f"layer {index}: only the first conv2d can have an init, and only 'whiten' "
                f"(got {spec.get('init')!r} on a {spec['type']})"
            )
        conv = _conv_in(model.net[0])
        kernel = conv.kernel_size[0]
        if conv.out_channels != 2 * conv.in_channels * kernel * kernel:
            raise InvalidLayerSpec(
                f"layer {index}: a whitening conv2d needs 2 x C x kernel x kernel = "
                f"{2 * conv.in_channels * kernel * kernel} filters, has {conv.out_channels}"
            )
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        weight, bias = whitening_weights(pixels, kernel)
        conv.weight.data.copy_(weight)
        if conv.bias is not None:
            conv.bias.data.copy_(bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")
    )
