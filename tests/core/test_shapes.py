"""The lecture's layer arithmetic, checked against the lecture's own numbers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.errors import InvalidLayerSpec
from service.core.formulas import conv_output_size, conv_params, pool_output_size, same_padding
from service.core.shapes import format_table, layer_table, multiply_adds
from training.architectures import LECTURE

# The lecture's model.summary(): output shapes and parameter counts, layer by layer.
LECTURE_TABLE = [
    ("conv2d", (30, 30, 32), 896),
    ("max_pooling2d", (15, 15, 32), 0),
    ("conv2d_1", (13, 13, 64), 18_496),
    ("max_pooling2d_1", (6, 6, 64), 0),
    ("conv2d_2", (4, 4, 64), 36_928),
    ("flatten", (1024,), 0),
    ("dense", (64,), 65_600),
    ("dense_1", (10,), 650),
]


def test_lecture_table_matches_the_lecture_summary() -> None:
    table = layer_table((32, 32, 3), LECTURE)
    assert [(r.name, r.output_shape, r.params) for r in table.rows] == LECTURE_TABLE
    assert table.total_params == 122_570
    assert table.trainable_params == 122_570


def test_lecture_conv_base_has_56320_params() -> None:
    assert layer_table((32, 32, 3), LECTURE[:5]).total_params == 56_320


def test_lecture_worked_example_227_gives_55x55x96() -> None:
    spec = [{"type": "conv2d", "filters": 96, "kernel": 11, "stride": 4, "padding": 0}]
    (row,) = layer_table((227, 227, 3), spec).rows
    assert row.output_shape == (55, 55, 96)
    assert row.params == (11 * 11 * 3 + 1) * 96


def test_lecture_worked_example_5x5_with_3x3_gives_3x3() -> None:
    assert conv_output_size(5, 3) == 3
    (row,) = layer_table((5, 5, 1), [{"type": "conv2d", "filters": 1, "kernel": 3}]).rows
    assert row.output_shape == (3, 3, 1)


def test_first_conv_params_follow_the_lecture_formula() -> None:
    assert conv_params(3, 3, 32) == ((3 * 3 * 3) + 1) * 32 == 896


def test_summary_text_shows_keras_layout() -> None:
    text = format_table(layer_table((32, 32, 3), LECTURE))
    assert "conv2d_1 (Conv2D)" in text
    assert "(None, 13, 13, 64)" in text
    assert "Total params: 122,570" in text
    assert "Non-trainable params: 0" in text


def test_pooling_13_floors_to_6_and_says_so() -> None:
    table = layer_table((13, 13, 64), [{"type": "max_pool", "pool": 2}])
    assert table.rows[0].output_shape == (6, 6, 64)
    assert "floored" in table.rows[0].note
    assert table.notes


def test_strict_mode_refuses_fractional_sizes() -> None:
    with pytest.raises(InvalidLayerSpec, match=r"max_pooling2d.*not a whole number"):
        layer_table((13, 13, 64), [{"type": "max_pool", "pool": 2}], strict=True)


def test_same_padding_keeps_size_at_stride_one_and_ceils_with_stride() -> None:
    spec: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same"},
        {"type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "padding": "same"},
    ]
    rows = layer_table((15, 15, 3), spec).rows
    assert rows[0].output_shape == (15, 15, 8)
    assert rows[1].output_shape == (8, 8, 8)
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(16, 3, 2) == (0, 1)


def test_batch_norm_has_four_params_per_channel_two_trainable() -> None:
    """gamma and beta train; the moving mean and variance count, as non-trainable (Keras)."""
    spec: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 16, "kernel": 3, "bias": False},
        {"type": "batch_norm"},
    ]
    table = layer_table((8, 8, 3), spec)
    bn = table.rows[1]
    assert (bn.params, bn.trainable_params) == (64, 32)
    assert "gamma and beta trainable" in bn.note
    assert table.as_dict()["non_trainable_params"] == 32


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"type": "dense", "units": 4}], "flatten"),
        ([{"type": "conv3d", "filters": 4}], "unknown layer type"),
        ([{"type": "conv2d", "filters": 4, "kernel": 64}], "below 1"),
        ([{"type": "conv2d", "filters": 0, "kernel": 3}], "filters"),
        ([{"type": "conv2d", "filters": 4, "kernel": 3, "activation": "swoosh"}], "activation"),
        ([{"type": "max_pool", "pool": 2}, {"type": "flatten"}, {"type": "max_pool"}], "(H, W, C)"),
        ([{"type": "dropout", "rate": 1.5}], "rate"),
    ],
)
def test_impossible_layers_name_the_layer_and_the_problem(spec: list, message: str) -> None:
    with pytest.raises(InvalidLayerSpec, match=r"layer \d") as info:
        layer_table((32, 32, 3), spec)
    assert message in info.value.message


@given(
    w=st.integers(1, 300),
    f=st.integers(1, 15),
    s=st.integers(1, 6),
    p=st.integers(0, 5),
)
def test_conv_output_size_counts_window_positions(w: int, f: int, s: int, p: int) -> None:
    positions = len(range(0, w + 2 * p - f + 1, s))
    if positions == 0:
        with pytest.raises(InvalidLayerSpec):
            conv_output_size(w, f, s, p)
    else:
        assert conv_output_size(w, f, s, p) == positions


@given(w=st.integers(1, 200), f=st.integers(1, 8), s=st.integers(1, 8))
def test_same_padding_gives_ceil_of_w_over_s(w: int, f: int, s: int) -> None:
    before, after = same_padding(w, f, s)
    assert 0 <= after - before <= 1
    assert conv_output_size(w + before + after, f, s) == -(-w // s)


@given(w=st.integers(2, 100), f=st.integers(1, 5))
def test_pooling_is_convolution_without_padding(w: int, f: int) -> None:
    if f <= w:
        assert pool_output_size(w, f, f) == conv_output_size(w, f, f, 0)


def test_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys, service.core.shapes, service.core.card, service.core.errors, "
        "service.core.datatypes; "
        "bad = {m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'torch', 'onnx', 'onnxruntime', 'fastapi', 'pydantic', 'PIL'}; "
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multiply_adds_of_the_lecture_model_by_hand() -> None:
    # conv 30*30*32*(3*3*3) + conv 13*13*64*(3*3*32) + conv 4*4*64*(3*3*64) + 1024*64 + 64*10
    by_hand = 30 * 30 * 32 * 27 + 13 * 13 * 64 * 288 + 4 * 4 * 64 * 576 + 1024 * 64 + 64 * 10
    assert multiply_adds(layer_table((32, 32, 3), LECTURE), LECTURE) == by_hand == 4_548_608


def test_multiply_adds_count_strided_same_convolutions_at_their_output_size() -> None:
    layers: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        {"type": "batch_norm"},
        {"type": "max_pool", "pool": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 3},
    ]
    table = layer_table((8, 8, 2), layers)
    assert multiply_adds(table, layers) == 4 * 4 * 4 * (3 * 3 * 2) + (2 * 2 * 4) * 3
