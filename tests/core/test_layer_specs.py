"""Typed layer specs: parsed once, one set of defaults, and each kind's own arithmetic."""

from __future__ import annotations

import pytest

from service.core.errors import InvalidLayerSpec
from service.core.layer_specs import (
    AvgPool,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    MaxPool,
    parse_layers,
)
from service.core.shapes import layer_table, multiply_adds
from training.architectures import LECTURE


def test_parsing_gives_keras_names_and_the_defaults() -> None:
    conv, pool, avg, flat, dense = parse_layers(
        [
            {"type": "conv2d", "filters": 8, "kernel": 3},
            {"type": "max_pool", "pool": 3},
            {"type": "avg_pool"},
            {"type": "flatten"},
            {"type": "dense", "units": 4, "name": "logits"},
        ]
    )
    assert conv == Conv2D("conv2d", 8, 3)  # stride 1, 'valid', bias, trainable
    assert (conv.stride, conv.padding, conv.bias, conv.trainable) == (1, "valid", True, True)
    assert pool == MaxPool("max_pooling2d", pool=3, stride=3)  # the stride is the window's
    assert avg == AvgPool("average_pooling2d", pool=2, stride=2)
    assert flat == Flatten("flatten") and dense == Dense("logits", 4)


def test_typed_layers_are_named_like_parsed_ones_and_give_the_same_table() -> None:
    typed = [Conv2D("", 32, 3, activation="relu"), MaxPool(""), Conv2D("", 64, 3)]
    dicts = [dict(LECTURE[0]), dict(LECTURE[1]), {"type": "conv2d", "filters": 64, "kernel": 3}]
    assert [layer.name for layer in parse_layers(typed)] == ["conv2d", "max_pooling2d", "conv2d_1"]
    assert layer_table((32, 32, 3), typed) == layer_table((32, 32, 3), dicts)


def test_each_kind_applies_the_lecture_formulas() -> None:
    step = Conv2D("c", 32, 3).apply((32, 32, 3), strict=False, where="c")
    assert step.shape == (30, 30, 32) and step.params == (3 * 3 * 3 + 1) * 32
    same = Conv2D("c", 16, 3, stride=2, padding="same").apply((32, 32, 3), False, "c")
    assert same.shape == (16, 16, 16)
    frozen = Conv2D("w", 24, 2, trainable=False).apply((32, 32, 3), False, "w")
    assert frozen.trainable == 0 and "frozen" in frozen.note
    assert BatchNorm("b", scale=False).apply((4, 4, 10), False, "b").trainable == 10
    assert Dense("d", 10).apply((64,), False, "d").params == 650
    with pytest.raises(InvalidLayerSpec, match="flat input"):
        Dense("d", 10).apply((4, 4, 64), False, "d")


def test_multiply_adds_come_from_each_layer() -> None:
    table = layer_table((32, 32, 3), LECTURE)
    conv = 30 * 30 * 32 * 27 + 13 * 13 * 64 * 288 + 4 * 4 * 64 * 576
    assert multiply_adds(table, LECTURE) == conv + 1024 * 64 + 64 * 10


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "batch_norm", "eps": "small"}, "expected a number"),
        ({"type": "dense", "units": 4, "output_scale": True}, "expected a number"),
        ({"type": "conv2d", "filters": 4, "kernel": 3, "trainable": "no"}, "'trainable'"),
    ],
)
def test_bad_values_name_the_layer(spec: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidLayerSpec, match=words) as caught:
        parse_layers([spec])
    assert str(caught.value).startswith("layer 0 (")
