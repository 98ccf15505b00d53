"""Layer specs, typed: one frozen dataclass per layer kind, parsed once from the dicts that
architectures, the calculator and the ONNX reader write, with one set of defaults.

Each layer answers the lecture's questions about itself: the shape it outputs for an input
(``apply``, by the formulas in ``shapes``), what it learns, and what it costs (``multiply_adds``).
The layer table (``shapes.layer_table``), training's module builder and the ONNX reader all
use these classes, so a default or a formula cannot differ between them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from service.core.errors import InvalidLayerSpec
from service.core.formulas import (
    MAX_DIM,
    conv_output_size,
    conv_params,
    dense_params,
    pool_output_size,
    same_padding,
)

Shape = tuple[int, ...]
"""An activation shape without the batch axis: ``(H, W, C)`` for images, ``(n,)`` after flatten."""

ACTIVATIONS = frozenset({"relu", "sigmoid", "tanh", "softmax", "gelu", "linear"})
FRACTIONAL = "fractional output size floored, as Keras does"


@dataclass(frozen=True)
class Step:
    """What a layer does to its input: the output shape, parameters, and a note for the table."""

    shape: Shape
    params: int = 0
    trainable: int = 0
    note: str = ""


@dataclass(frozen=True)
class Layer:
    """Common to every kind: the Keras-style name (``conv2d_1``) the table and modules use;
    empty until ``parse_layers`` gives it the default one."""

    name: str
    type: ClassVar[str]
    keras_class: ClassVar[str]

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        return Step(shape)

    def multiply_adds(self, shape_in: Shape, shape_out: Shape) -> int:
        """Multiply-adds per image; only convolutions and dense layers count (the rest is cheap
        next to them)."""
        return 0


def _image(shape: Shape, where: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise InvalidLayerSpec(f"{where}: needs an (H, W, C) input, got {list(shape)}")
    return shape[0], shape[1], shape[2]


@dataclass(frozen=True)
class Conv2D(Layer):
    filters: int
    kernel: int
    stride: int = 1
    padding: str | int = "valid"  # 'valid', 'same' (TensorFlow's) or pixels on every side
    activation: str | None = None
    bias: bool = True
    trainable: bool = True  # False: set before training (e.g. whitening), not trained
    init: str | None = None  # 'whiten' or 'dirac': set by training from data or as identity
    type: ClassVar[str] = "conv2d"
    keras_class: ClassVar[str] = "Conv2D"

    def pads(self, size: int) -> tuple[int, int]:
        """Padding (before, after) along an input axis of ``size``."""
        if self.padding == "valid":
            return 0, 0
        if self.padding == "same":
            return same_padding(size, self.kernel, self.stride)
        return int(self.padding), int(self.padding)

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        h, w, c = _image(shape, where)
        f, s = self.kernel, self.stride
        ph, pw = self.pads(h), self.pads(w)
        try:
            h2, w2 = _conv_dim(h, f, s, ph, strict), _conv_dim(w, f, s, pw, strict)
        except InvalidLayerSpec as exc:
            raise InvalidLayerSpec(f"{where}: {exc}") from None
        note = FRACTIONAL if (h + sum(ph) - f) % s or (w + sum(pw) - f) % s else ""
        params = conv_params(f, c, self.filters, bias=self.bias)
        if self.trainable:
            return Step((h2, w2, self.filters), params, params, note)
        frozen = "frozen: set before training, not trained"
        return Step((h2, w2, self.filters), params, 0, f"{note}; {frozen}" if note else frozen)

    def multiply_adds(self, shape_in: Shape, shape_out: Shape) -> int:
        # F*F*C_in for each of the H_out*W_out*K outputs
        return math.prod(shape_out) * self.kernel * self.kernel * shape_in[-1]


def _conv_dim(w: int, f: int, s: int, pad: tuple[int, int], strict: bool) -> int:
    """One spatial size; symmetric padding keeps the lecture's formula in error messages."""
    if pad[0] == pad[1]:
        return conv_output_size(w, f, s, pad[0], strict=strict)
    return conv_output_size(w + pad[0] + pad[1], f, s, 0, strict=strict)


@dataclass(frozen=True)
class MaxPool(Layer):
    pool: int = 2
    stride: int = 2  # the window's size unless given
    type: ClassVar[str] = "max_pool"
    keras_class: ClassVar[str] = "MaxPooling2D"

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        h, w, c = _image(shape, where)
        f, s = self.pool, self.stride
        try:
            h2, w2 = (
                pool_output_size(h, f, s, strict=strict),
                pool_output_size(w, f, s, strict=strict),
            )
        except InvalidLayerSpec as exc:
            raise InvalidLayerSpec(f"{where}: {exc}") from None
        return Step((h2, w2, c), note=FRACTIONAL if (h - f) % s or (w - f) % s else "")


@dataclass(frozen=True)
class AvgPool(MaxPool):
    type: ClassVar[str] = "avg_pool"
    keras_class: ClassVar[str] = "AveragePooling2D"


@dataclass(frozen=True)
class Flatten(Layer):
    type: ClassVar[str] = "flatten"
    keras_class: ClassVar[str] = "Flatten"

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        return Step((math.prod(shape),))


@dataclass(frozen=True)
class Dense(Layer):
    units: int
    activation: str | None = None
    bias: bool = True
    output_scale: float | None = None  # a constant factor on the output (airbench's 1/9)
    type: ClassVar[str] = "dense"
    keras_class: ClassVar[str] = "Dense"

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        if len(shape) != 1:
            raise InvalidLayerSpec(
                f"{where}: dense needs a flat input; add a flatten layer before it "
                f"(input is {list(shape)})"
            )
        params = dense_params(shape[0], self.units, bias=self.bias)
        return Step((self.units,), params, params)

    def multiply_adds(self, shape_in: Shape, shape_out: Shape) -> int:
        return shape_in[-1] * self.units


@dataclass(frozen=True)
class Dropout(Layer):
    rate: float = 0.5
    type: ClassVar[str] = "dropout"
    keras_class: ClassVar[str] = "Dropout"


@dataclass(frozen=True)
class BatchNorm(Layer):
    scale: bool = True  # False: gamma fixed at 1, only beta learned (airbench)
    eps: float = 1e-5
    momentum: float = 0.1  # PyTorch's: the weight of the new batch in the running statistics
    type: ClassVar[str] = "batch_norm"
    keras_class: ClassVar[str] = "BatchNormalization"

    def apply(self, shape: Shape, strict: bool, where: str) -> Step:
        channels = shape[-1]
        if self.scale:
            note = "gamma and beta trainable; moving mean and variance not"
            return Step(shape, 4 * channels, 2 * channels, note)
        note = "beta trainable; gamma fixed at 1 (no learned scale); moving mean and variance not"
        return Step(shape, 4 * channels, channels, note)


@dataclass(frozen=True)
class Activation(Layer):
    fn: str
    type: ClassVar[str] = "activation"
    keras_class: ClassVar[str] = "Activation"


KINDS: dict[str, type[Layer]] = {
    kind.type: kind
    for kind in (Conv2D, MaxPool, AvgPool, Flatten, Dense, Dropout, BatchNorm, Activation)
}
# Keras' default layer names, used for the table and for the module names of built models.
KERAS_NAMES = {
    "conv2d": "conv2d",
    "max_pool": "max_pooling2d",
    "avg_pool": "average_pooling2d",
    "flatten": "flatten",
    "dense": "dense",
    "dropout": "dropout",
    "batch_norm": "batch_normalization",
    "activation": "activation",
}


# -- parsing: the one place spec dicts are read, and their defaults --------------------------


def parse_layers(layers: Sequence[Mapping[str, Any] | Layer]) -> list[Layer]:
    """Spec dicts (or already typed layers) as typed layers with their Keras names; raises
    ``InvalidLayerSpec`` naming the layer."""
    parsed: list[Layer] = []
    counts: dict[str, int] = {}
    for index, spec in enumerate(layers):
        if not isinstance(spec, Mapping | Layer):
            raise InvalidLayerSpec(f"layer {index}: must be an object, got {spec!r}")
        kind = spec.type if isinstance(spec, Layer) else spec.get("type")
        if kind not in KINDS:
            raise InvalidLayerSpec(
                f"layer {index}: unknown layer type {kind!r}; known: {', '.join(KINDS)}"
            )
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        given = spec.name if isinstance(spec, Layer) else spec.get("name")
        name = str(given or (KERAS_NAMES[kind] + (f"_{n}" if n else "")))
        if isinstance(spec, Layer):  # typed already (the ONNX reader's): named if it is not
            parsed.append(spec if spec.name == name else replace(spec, name=name))
        else:
            parsed.append(parse_layer(spec, name, f"layer {index} ({name}, {kind})"))
    return parsed


def parse_layer(spec: Mapping[str, Any], name: str, where: str) -> Layer:
    kind = spec["type"]
    if kind == "conv2d":
        kernel = _int(spec, "kernel", None, where)
        return Conv2D(
            name,
            filters=_int(spec, "filters", None, where),
            kernel=kernel,
            stride=_int(spec, "stride", 1, where),
            activation=_activation(spec, where),
            bias=_flag(spec, "bias", where),
            padding=_padding(spec, where),
            trainable=_flag(spec, "trainable", where),
            init=spec.get("init"),
        )
    if kind in ("max_pool", "avg_pool"):
        pool = _int(spec, "pool", 2, where)
        stride = _int(spec, "stride", pool, where)
        return (MaxPool if kind == "max_pool" else AvgPool)(name, pool, stride)
    if kind == "dense":
        units = _int(spec, "units", None, where)
        scale = spec.get("output_scale")
        return Dense(
            name, units, _activation(spec, where), _flag(spec, "bias", where), _float(scale, where)
        )
    if kind == "dropout":
        rate = spec.get("rate", 0.5)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise InvalidLayerSpec(f"{where}: rate must be in [0, 1), got {rate!r}")
        return Dropout(name, float(rate))
    if kind == "batch_norm":
        eps = _float(spec.get("eps", 1e-5), where)
        momentum = _float(spec.get("momentum", 0.1), where)
        assert eps is not None and momentum is not None
        return BatchNorm(name, _flag(spec, "scale", where), eps, momentum)
    if kind == "activation":
        if spec.get("fn") is None:
            raise InvalidLayerSpec(f"{where}: 'fn' names the activation, e.g. 'relu'")
        return Activation(name, str(_activation(spec, where, key="fn") or "linear"))
    return Flatten(name)


def _int(spec: Mapping[str, Any], key: str, default: int | None, where: str) -> int:
    value = spec.get(key, default)
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # square windows may be written (3, 3) as in Keras
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLayerSpec(f"{where}: '{key}' must be an integer, got {value!r}")
    if value < 1 or value > MAX_DIM:
        raise InvalidLayerSpec(f"{where}: '{key}' must be between 1 and {MAX_DIM}, got {value}")
    return value


def _float(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidLayerSpec(f"{where}: expected a number, got {value!r}")
    return float(value)


def _activation(spec: Mapping[str, Any], where: str, key: str = "activation") -> str | None:
    act = spec.get(key)
    if act is None or act == "linear":
        return None
    if act not in ACTIVATIONS:
        raise InvalidLayerSpec(
            f"{where}: unknown activation {act!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        )
    return str(act)


def _flag(spec: Mapping[str, Any], key: str, where: str) -> bool:
    value = spec.get(key, True)
    if not isinstance(value, bool):
        raise InvalidLayerSpec(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


def _padding(spec: Mapping[str, Any], where: str) -> str | int:
    padding = spec.get("padding", "valid")
    if padding in ("valid", "same"):
        return str(padding)
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= MAX_DIM:
        raise InvalidLayerSpec(
            f"{where}: padding must be 'valid', 'same' or a non-negative integer, got {padding!r}"
        )
    return padding
