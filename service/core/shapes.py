"""The model summary: walk a layer stack from its input shape and tabulate, layer by layer, the
output shape and parameters, as Keras' ``model.summary()`` does.

The arithmetic is the lecture's (``formulas``); each layer kind applies it to itself
(``layer_specs``). Pure standard library, so training (to build and summarise models), the
service (to inspect them) and the calculator share one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import InvalidLayerSpec
from service.core.formulas import MAX_DIM
from service.core.layer_specs import KINDS, Layer, Shape, parse_layers

MAX_ELEMENTS = MAX_DIM * 64  # largest activation (H * W * C) one layer may output
MAX_LAYERS = 1000  # longer stacks are absurd for a calculator request
LAYER_TYPES = tuple(KINDS)


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


def _check_input(input_shape: Sequence[int], count: int) -> Shape:
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
    if count > MAX_LAYERS:
        raise InvalidLayerSpec(f"{count} layers, more than the limit of {MAX_LAYERS}")
    return tuple(input_shape)


def layer_table(
    input_shape: Sequence[int],
    layers: Sequence[Mapping[str, Any] | Layer],
    *,
    strict: bool = False,
) -> LayerTable:
    """Walk a layer stack (spec dicts or typed layers) from ``input_shape`` (H, W, C) and
    return the Keras-style summary.

    Raises ``InvalidLayerSpec`` naming the layer and the arithmetic that failed.
    """
    shape = _check_input(input_shape, len(layers))
    rows: list[LayerRow] = []
    for index, layer in enumerate(parse_layers(layers)):
        where = f"layer {index} ({layer.name}, {layer.type})"
        step = layer.apply(shape, strict, where)
        shape = step.shape
        if math.prod(shape) > MAX_ELEMENTS:
            raise InvalidLayerSpec(
                f"{where}: output {list(shape)} is absurdly large "
                f"(more than {MAX_ELEMENTS:,} values)"
            )
        rows.append(LayerRow(layer.name, layer.type, shape, step.params, step.trainable, step.note))
    notes = []
    if any(r.note.startswith("fractional") for r in rows):
        notes.append(
            "some sizes were not whole numbers and were floored (use strict mode to refuse)"
        )
    return LayerTable(tuple(input_shape), tuple(rows), tuple(notes))


def format_table(table: LayerTable, title: str = "sequential") -> str:
    """The table as Keras' ``model.summary()`` prints it."""
    classes = {kind: cls.keras_class for kind, cls in KINDS.items()}
    header = f"{'Layer (type)':<34}{'Output Shape':<26}{'Param #':>10}"
    rule = "=" * len(header)
    lines = [f'Model: "{title}"', "_" * len(header), header, rule]
    for i, row in enumerate(table.rows):
        shape = "(None, " + ", ".join(str(d) for d in row.output_shape) + ")"
        label = f"{row.name} ({classes[row.type]})"
        lines.append(f"{label:<34}{shape:<26}{row.params:>10,}")
        lines.append(rule if i == len(table.rows) - 1 else "")
    total, trainable = table.total_params, table.trainable_params
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(lines)


def multiply_adds(table: LayerTable, layers: Sequence[Mapping[str, Any] | Layer]) -> int:
    """Multiply-adds per image of the convolutions and dense layers: the cost that sets speed."""
    total, shape = 0, table.input_shape
    for layer, row in zip(parse_layers(layers), table.rows, strict=True):
        total += layer.multiply_adds(shape, row.output_shape)
        shape = row.output_shape
    return total
