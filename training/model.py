"""PyTorch models built from architectures declared as data (``training.architectures``).

The layer table comes from ``service.core.shapes`` (pure Python), so the service shows the same
numbers without torch; ``build_model`` walks that table to size each PyTorch layer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")
    )
