"""The lecture's layer arithmetic: output sizes and parameter counts of a layer stack.

Pure standard library, so training (to build and summarise models) and the service (to inspect
them) share one implementation. Formulas, as the lecture gives them:

- convolution: ``W2 = (W1 - F + 2P) / S + 1``, ``D2 = K``, parameters ``(F*F*C_in + 1) * K``
- pooling:     ``W2 = (W1 - F) / S + 1``, ``D2 = D1``, no parameters
- dense:       ``(n_in + 1) * units``
- batch norm:  4 per channel (gamma, beta trainable; moving mean and variance not), as in Keras
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import InvalidLayerSpec

Shape = tuple[int, ...]
"""An activation shape without the batch axis: ``(H, W, C)`` for images, ``(n,)`` after flatten."""

ACTIVATIONS = frozenset({"relu", "sigmoid", "tanh", "softmax", "gelu", "linear"})
LAYER_TYPES = (
    "conv2d",
    "max_pool",
    "avg_pool",
    "flatten",
    "dense",
    "dropout",
    "batch_norm",
    "activation",
)
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
KERAS_CLASSES = {
    "conv2d": "Conv2D",
    "max_pool": "MaxPooling2D",
    "avg_pool": "AveragePooling2D",
    "flatten": "Flatten",
    "dense": "Dense",
    "dropout": "Dropout",
    "batch_norm": "BatchNormalization",
    "activation": "Activation",
}
MAX_DIM = 1 << 20  # larger sizes are absurd for this service and would overflow later arithmetic
MAX_ELEMENTS = MAX_DIM * 64  # largest activation (H * W * C) one layer may output
MAX_LAYERS = 1000  # longer stacks are absurd for a calculator request


@dataclass(frozen=True)
class LayerRow:
    """One row of the model summary: what a layer outputs and what it learns."""

    name: str
    type: str
    output_shape: Shape
    params: int
    trainable_params: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "trainable_params": self.trainable_params,
            **({"note": self.note} if self.note else {}),
        }


@dataclass(frozen=True)
class LayerTable:
    input_shape: Shape
    rows: tuple[LayerRow, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.rows)

    @property
    def output_shape(self) -> Shape:
        return self.rows[-1].output_shape if self.rows else self.input_shape

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "layers": [r.as_dict() for r in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.total_params - self.trainable_params,
            "notes": list(self.notes),
        }


def conv_output_size(w: int, f: int, s: int = 1, p: int = 0, *, strict: bool = False) -> int:
    """``(W - F + 2P) / S + 1``; floors a fractional result (as Keras does) unless ``strict``."""
    if w < 1 or f < 1 or s < 1 or p < 0:
        raise InvalidLayerSpec(f"sizes must be positive: W={w}, F={f}, S={s}, P={p}")
    span = w - f + 2 * p
    if span < 0:
        raise InvalidLayerSpec(
            f"(W - F + 2P) / S + 1 = ({w} - {f} + 2*{p}) / {s} + 1 is below 1: "
            f"the window is larger than the padded input"
        )
    if strict and span % s:
        raise InvalidLayerSpec(
            f"(W - F + 2P) / S + 1 = ({w} - {f} + 2*{p}) / {s} + 1 = {span / s + 1:g} "
            f"is not a whole number"
        )
    return span // s + 1


def pool_output_size(w: int, f: int, s: int, *, strict: bool = False) -> int:
    """``(W - F) / S + 1``: pooling is a convolution without padding or parameters."""
    if w < 1 or f < 1 or s < 1:
        raise InvalidLayerSpec(f"sizes must be positive: W={w}, F={f}, S={s}")
    span = w - f
    if span < 0:
        raise InvalidLayerSpec(
            f"(W - F) / S + 1 = ({w} - {f}) / {s} + 1 is below 1: the pool window is larger "
            f"than the input"
        )
    if strict and span % s:
        raise InvalidLayerSpec(
            f"(W - F) / S + 1 = ({w} - {f}) / {s} + 1 = {span / s + 1:g} is not a whole number"
        )
    return span // s + 1


def conv_params(f: int, c_in: int, k: int, *, bias: bool = True) -> int:
    """``(F*F*C_in + 1) * K``: each of the K filters has F*F*C_in weights and one bias."""
    return (f * f * c_in + (1 if bias else 0)) * k


def dense_params(n_in: int, units: int, *, bias: bool = True) -> int:
    return (n_in + (1 if bias else 0)) * units


def same_padding(w: int, f: int, s: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding (before, after): output ceil(W/S), extra on the far side."""
    out = -(-w // s)
    total = max((out - 1) * s + f - w, 0)
    return total // 2, total - total // 2


def _conv_dim(w: int, f: int, s: int, pad: tuple[int, int], strict: bool) -> int:
    """One spatial size; symmetric padding keeps the lecture's formula in error messages."""
    if pad[0] == pad[1]:
        return conv_output_size(w, f, s, pad[0], strict=strict)
    return conv_output_size(w + pad[0] + pad[1], f, s, 0, strict=strict)


def _int(spec: Mapping[str, Any], key: str, default: int | None, where: str) -> int:
    value = spec.get(key, default)
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # square windows may be written (3, 3) as in Keras
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLayerSpec(f"{where}: '{key}' must be an integer, got {value!r}")
    if value < 1 or value > MAX_DIM:
        raise InvalidLayerSpec(f"{where}: '{key}' must be between 1 and {MAX_DIM}, got {value}")
    return value


def _activation(spec: Mapping[str, Any], where: str, key: str = "activation") -> str | None:
    act = spec.get(key)
    if act is None or act == "linear":
        return None
    if act not in ACTIVATIONS:
        raise InvalidLayerSpec(
            f"{where}: unknown activation {act!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        )
    return str(act)


def _bias(spec: Mapping[str, Any], where: str) -> bool:
    bias = spec.get("bias", True)
    if not isinstance(bias, bool):
        raise InvalidLayerSpec(f"{where}: 'bias' must be true or false, got {bias!r}")
    return bias


def _trainable(spec: Mapping[str, Any], where: str) -> bool:
    trainable = spec.get("trainable", True)
    if not isinstance(trainable, bool):
        raise InvalidLayerSpec(f"{where}: 'trainable' must be true or false, got {trainable!r}")
    return trainable


def conv_padding(spec: Mapping[str, Any], w: int, f: int, s: int, where: str) -> tuple[int, int]:
    """Padding of a conv layer as (before, after) for an input of size ``w``."""
    padding = spec.get("padding", "valid")
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return same_padding(w, f, s)
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= MAX_DIM:
        raise InvalidLayerSpec(
            f"{where}: padding must be 'valid', 'same' or a non-negative integer, got {padding!r}"
        )
    return padding, padding


def layer_table(
    input_shape: Sequence[int], layers: Sequence[Mapping[str, Any]], *, strict: bool = False
) -> LayerTable:
    """Walk a layer stack from ``input_shape`` (H, W, C) and return the Keras-style summary.

    Raises ``InvalidLayerSpec`` naming the layer and the arithmetic that failed.
    """
    if len(input_shape) != 3 or any(
        isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM for d in input_shape
    ):
        raise InvalidLayerSpec(
            f"input shape must be (H, W, C) of positive integers, got {list(input_shape)}"
        )
    if math.prod(input_shape) > MAX_ELEMENTS:
        raise InvalidLayerSpec(
            f"input shape {list(input_shape)} is absurdly large (more than {MAX_ELEMENTS:,} values)"
        )
    if len(layers) > MAX_LAYERS:
        raise InvalidLayerSpec(f"{len(layers)} layers, more than the limit of {MAX_LAYERS}")
    shape: Shape = tuple(input_shape)
    rows: list[LayerRow] = []
    notes: list[str] = []
    counts: dict[str, int] = {}
    for index, spec in enumerate(layers):
        if not isinstance(spec, Mapping):
            raise InvalidLayerSpec(f"layer {index}: must be an object, got {spec!r}")
        kind = spec.get("type")
        if kind not in KERAS_NAMES:
            raise InvalidLayerSpec(
                f"layer {index}: unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}"
            )
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        name = str(spec.get("name") or (KERAS_NAMES[kind] + (f"_{n}" if n else "")))
        where = f"layer {index} ({name}, {kind})"
        params = trainable = 0
        note = ""
        if kind in ("conv2d", "max_pool", "avg_pool") and len(shape) != 3:
            raise InvalidLayerSpec(f"{where}: needs an (H, W, C) input, got {list(shape)}")
        if kind == "conv2d":
            h, w, c = shape
            k = _int(spec, "filters", None, where)
            f = _int(spec, "kernel", None, where)
            s = _int(spec, "stride", 1, where)
            _activation(spec, where)
            bias = _bias(spec, where)
            ph, pw = conv_padding(spec, h, f, s, where), conv_padding(spec, w, f, s, where)
            try:
                h2 = _conv_dim(h, f, s, ph, strict)
                w2 = _conv_dim(w, f, s, pw, strict)
            except InvalidLayerSpec as exc:
                raise InvalidLayerSpec(f"{where}: {exc}") from None
            if (h + sum(ph) - f) % s or (w + sum(pw) - f) % s:
                note = "fractional output size floored, as Keras does"
            shape = (h2, w2, k)
            params = trainable = conv_params(f, c, k, bias=bias)
            if not _trainable(spec, where):  # e.g. a whitening layer set from the data
                trainable = 0
                frozen = "frozen: set before training, not trained"
                note = f"{note}; {frozen}" if note else frozen
        elif kind in ("max_pool", "avg_pool"):
            h, w, c = shape
            f = _int(spec, "pool", 2, where)
            s = _int(spec, "stride", f, where)
            try:
                h2 = pool_output_size(h, f, s, strict=strict)
                w2 = pool_output_size(w, f, s, strict=strict)
            except InvalidLayerSpec as exc:
                raise InvalidLayerSpec(f"{where}: {exc}") from None
            if (h - f) % s or (w - f) % s:
                note = "fractional output size floored, as Keras does"
            shape = (h2, w2, c)
        elif kind == "flatten":
            shape = (math.prod(shape),)
        elif kind == "dense":
            if len(shape) != 1:
                raise InvalidLayerSpec(
                    f"{where}: dense needs a flat input; add a flatten layer before it "
                    f"(input is {list(shape)})"
                )
            units = _int(spec, "units", None, where)
            _activation(spec, where)
            params = trainable = dense_params(shape[0], units, bias=_bias(spec, where))
            shape = (units,)
        elif kind == "dropout":
            rate = spec.get("rate", 0.5)
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
                raise InvalidLayerSpec(f"{where}: rate must be in [0, 1), got {rate!r}")
        elif kind == "batch_norm":
            channels = shape[-1]
            scale = spec.get("scale", True)
            if not isinstance(scale, bool):
                raise InvalidLayerSpec(f"{where}: 'scale' must be true or false, got {scale!r}")
            params, trainable = 4 * channels, (2 if scale else 1) * channels
            note = (
                "gamma and beta trainable; moving mean and variance not"
                if scale
                else "beta trainable; gamma fixed at 1 (no learned scale); moving mean and "
                "variance not"
            )
        elif kind == "activation":
            if spec.get("fn") is None:
                raise InvalidLayerSpec(f"{where}: 'fn' names the activation, e.g. 'relu'")
            _activation(spec, where, key="fn")
        if math.prod(shape) > MAX_ELEMENTS:
            raise InvalidLayerSpec(
                f"{where}: output {list(shape)} is absurdly large "
                f"(more than {MAX_ELEMENTS:,} values)"
            )
        rows.append(LayerRow(name, kind, shape, params, trainable, note))
    if any(r.note.startswith("fractional") for r in rows):
        notes.append(
            "some sizes were not whole numbers and were floored (use strict mode to refuse)"
        )
    return LayerTable(tuple(input_shape), tuple(rows), tuple(notes))


def format_table(table: LayerTable, title: str = "sequential") -> str:
    """The table as Keras' ``model.summary()`` prints it."""
    header = f"{'Layer (type)':<34}{'Output Shape':<26}{'Param #':>10}"
    rule = "=" * len(header)
    lines = [f'Model: "{title}"', "_" * len(header), header, rule]
    for i, row in enumerate(table.rows):
        shape = "(None, " + ", ".join(str(d) for d in row.output_shape) + ")"
        label = f"{row.name} ({KERAS_CLASSES[row.type]})"
        lines.append(f"{label:<34}{shape:<26}{row.params:>10,}")
        lines.append(rule if i == len(table.rows) - 1 else "")
    total, trainable = table.total_params, table.trainable_params
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(lines)


def multiply_adds(table: LayerTable, layers: Sequence[Mapping[str, Any]]) -> int:
    """Multiply-adds per image of the convolutions and dense layers: the cost that sets speed.

    A convolution does F*F*C_in of them for each of its H_out*W_out*K outputs; a dense layer
    n_in per unit. Pooling, batch norm and activations are cheap next to them and not counted.
    """
    total, shape = 0, table.input_shape
    for spec, row in zip(layers, table.rows, strict=True):
        if row.type == "conv2d":
            h, w, k = row.output_shape
            f = int(spec["kernel"])
            total += h * w * k * f * f * shape[-1]
        elif row.type == "dense":
            total += shape[-1] * row.output_shape[-1]
        shape = row.output_shape
    return total
