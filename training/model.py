"""PyTorch models built from architectures declared as data (``training.architectures``).

The layer table comes from ``service.core.shapes`` (pure Python), so the service shows the same
numbers without torch; ``build_model`` walks that table to size each PyTorch layer.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.core.errors import InvalidLayerSpec
from service.core.layer_specs import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool,
    parse_layers,
)
from service.core.shapes import layer_table
from training.architectures import ARCHITECTURES, INPUT_SHAPE
from training.augment import reflect_index
from training.config import TrainConfig


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


class FullPrecisionConv2d(nn.Conv2d):
    """A convolution that stays in float32 under autocast: the whitening layer.

    It scales each patch direction by 1/sqrt(its variance), so the faintest directions are
    multiplied up to ~130-fold on CIFAR-10, and with them bf16's rounding of the pixels.
    The layer is 0.1% of the network's multiply-adds; in the exported graph it is a plain Conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _with_activation(layer: nn.Module, activation: str | None) -> nn.Module:
    act = _activation(activation)
    return layer if act is None else nn.Sequential(layer, act)


class LayerStack(nn.Sequential):
    """The layers in order; in training, a ReLU straight before a max-pool runs after it.

    ReLU is monotone, so it commutes with max-pooling: the values and the gradients are the same
    bits either way (a test checks, bf16 included), but after the pool ReLU and its backward touch
    a quarter of the elements. The lecture recipe's bf16 step runs 6-8% faster here
    (docs/training.md). Evaluation, and so the export, keep Keras' order: each layer's output is a
    tensor in the graph, where the service's inspection finds it.
    """

    def __init__(self, modules: OrderedDict[str, nn.Module]):
        super().__init__(modules)
        layers = list(modules.values())
        self._relu_before_pool = frozenset(
            i
            for i, (layer, after) in enumerate(pairwise(layers))
            if type(after) is nn.MaxPool2d and _ends_in_relu(layer)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._relu_before_pool:
            return super().forward(x)
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if i in self._relu_before_pool:
                head = list(layer.children())[:-1] if isinstance(layer, nn.Sequential) else []
                for part in head:
                    x = part(x)
                x = F.relu(layers[i + 1](x))
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


def _ends_in_relu(layer: nn.Module) -> bool:
    """A ReLU layer, or a layer whose own last part is one (a convolution with its activation)."""
    last = layer[-1] if isinstance(layer, nn.Sequential) and len(layer) > 0 else layer
    return type(last) is nn.ReLU


def build_layers(
    layers: list[dict[str, Any]], input_shape: tuple[int, int, int] = INPUT_SHAPE
) -> LayerStack:
    """The layer stack as ``nn.Sequential`` with Keras' layer names (``conv2d_1``, ``dense``...).

    Works on NCHW float tensors; names carry into the ONNX graph's node names. The specs are
    parsed once (``service.core.layer_specs``) and the table sizes each layer.
    """
    specs = parse_layers(layers)
    table = layer_table(input_shape, specs)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    shape: tuple[int, ...] = tuple(input_shape)
    for spec, row in zip(specs, table.rows, strict=True):
        modules[row.name] = _module(spec, shape)
        shape = row.output_shape
    return LayerStack(modules)


def _module(spec: Layer, shape: tuple[int, ...]) -> nn.Module:
    """The PyTorch module of one layer, for an input of ``shape`` (H, W, C) or (n,)."""
    if isinstance(spec, Conv2D):
        h, w, c = shape
        (top, bottom), (left, right) = spec.pads(h), spec.pads(w)
        kind = FullPrecisionConv2d if spec.init == "whiten" else nn.Conv2d
        conv = kind(c, spec.filters, spec.kernel, spec.stride, bias=spec.bias)
        conv.requires_grad_(spec.trainable)
        if top == bottom and left == right:
            conv.padding = (top, left)
            return _with_activation(conv, spec.activation)
        # TensorFlow's 'same' puts the odd pixel after
        padded = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        return _with_activation(padded, spec.activation)
    if isinstance(spec, AvgPool):  # before MaxPool: an AvgPool is a MaxPool's subclass
        return nn.AvgPool2d(spec.pool, spec.stride)
    if isinstance(spec, MaxPool):
        return nn.MaxPool2d(spec.pool, spec.stride)
    if isinstance(spec, Flatten):
        return nn.Flatten()
    if isinstance(spec, Dense):
        linear = nn.Linear(shape[0], spec.units, bias=spec.bias)
        module = _with_activation(linear, spec.activation)
        if spec.output_scale is not None:  # airbench's 1/9: a cooler softmax early in training
            module = nn.Sequential(module, Scale(spec.output_scale))
        return module
    if isinstance(spec, Dropout):
        return nn.Dropout(spec.rate)
    if isinstance(spec, BatchNorm):
        norm = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(
            shape[-1], eps=spec.eps, momentum=spec.momentum
        )
        if not spec.scale:  # airbench: gamma stays 1, only the bias is learned
            norm.weight.requires_grad_(False)
        return norm
    if isinstance(spec, Activation):
        act = _activation(spec.fn)
        return act if act is not None else nn.Identity()
    raise InvalidLayerSpec(f"{spec.name}: unsupported layer type {spec.type!r}")


class Scale(nn.Module):
    """Multiplies by a constant (a ``Mul`` in the graph)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def tta_views(tta: str, h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """The views of test-time augmentation as (row indices, column indices, weight).

    ``flip``: the image and its mirror, half each. ``flip-translate`` (airbench's multi-crop):
    those two at a quarter each, and the image shifted one pixel up-left and one down-right
    (reflected at the border), each also mirrored, at an eighth each.
    """
    rows, cols = torch.arange(h), torch.arange(w)
    mirror = cols.flip(0)
    if tta == "none":
        return [(rows, cols, 1.0)]
    if tta == "flip":
        return [(rows, cols, 0.5), (rows, mirror, 0.5)]
    if tta == "flip-translate":
        views = [(rows, cols, 0.25), (rows, mirror, 0.25)]
        for d in (-1, 1):
            r, c = reflect_index(rows + d, h), reflect_index(cols + d, w)
            views += [(r, c, 0.125), (r, c.flip(0), 0.125)]
        return views
    raise ValueError(f"unknown test-time augmentation {tta!r}")


class Classifier(nn.Module):
    """uint8 NHWC RGB pixels in, logits out: the preprocessing lives in the model (and its graph).

    Training feeds raw pixels through the same ``forward`` the export traces, so training and
    serving cannot disagree on scaling or layout. In eval mode ``tta`` views of each image go
    through the net as one batch and their logits are averaged: the export traces that too, so
    the served graph and the parity check include it.
    """

    def __init__(
        self,
        layers: list[dict[str, Any]],
        input_shape: tuple[int, int, int] = INPUT_SHAPE,
        tta: str = "none",
    ):
        super().__init__()
        self.net = build_layers(layers, input_shape)
        self.tta = tta
        self._views = tta_views(tta, input_shape[0], input_shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training or len(self._views) == 1:
            return self._logits(images)  # (N, 10)
        n, device = images.shape[0], images.device
        batch = torch.cat(  # (V*N, 32, 32, 3): Gather ops in the graph, the batch axis kept
            [
                images.index_select(1, r.to(device)).index_select(2, c.to(device))
                for r, c, _ in self._views
            ]
        )
        logits = self._logits(batch)  # (V*N, 10)
        averaged = self._views[0][2] * logits[:n]
        for i, (_, _, weight) in enumerate(self._views[1:], start=1):
            averaged = averaged + weight * logits[i * n : (i + 1) * n]
        return averaged  # (N, 10)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
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


def build_classifier(config: TrainConfig) -> Classifier:
    """The recipe's architecture, with its test-time views, initialised as the recipe says."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {', '.join(ARCHITECTURES)}")
    model = Classifier(ARCHITECTURES[config.arch], tta=config.tta)
    if config.init == "keras":
        keras_init(model)
    return model


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


def dirac_(conv: nn.Conv2d) -> None:
    """Partial identity: the first min(C_in, K) filters pass their input channel through.

    Only the filters past C_in keep their random init, so a deep stack starts close to the
    identity on the channels it shares with its input (airbench's init).
    """
    k = conv.kernel_size[0]
    if k % 2 == 0 or conv.kernel_size[0] != conv.kernel_size[1]:
        raise InvalidLayerSpec(f"a 'dirac' init needs an odd square kernel, got {conv.kernel_size}")
    n = min(conv.in_channels, conv.out_channels)
    with torch.no_grad():
        conv.weight[:n].zero_()
        conv.weight[torch.arange(n), torch.arange(n), k // 2, k // 2] = 1.0


def init_from_data(model: Classifier, layers: list[dict[str, Any]], images: np.ndarray) -> None:
    """Apply the ``init`` of each conv2d spec: ``whiten`` (from training images, uint8 NHWC) or
    ``dirac`` (partial identity).

    Only the first layer can be whitened: it is the one that sees the pixels.
    """
    for index, spec in enumerate(layers):
        init = spec.get("init")
        if init is None:
            continue
        if spec["type"] != "conv2d" or init not in ("whiten", "dirac"):
            raise InvalidLayerSpec(
                f"layer {index}: only a conv2d can have an init, 'dirac' or (on the first "
                f"conv2d) 'whiten' (got {init!r} on a {spec['type']})"
            )
        conv = _conv_in(model.net[index])
        if init == "dirac":
            dirac_(conv)
            continue
        if index != 0:
            raise InvalidLayerSpec(f"layer {index}: only the first conv2d can be whitened")
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
