"""What the shape calculator relies on in the core: the pooling formula, limits, strict mode."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.errors import InvalidLayerSpec
from service.core.formulas import MAX_DIM, pool_output_size
from service.core.shapes import MAX_LAYERS, layer_table


def test_pool_errors_quote_the_pooling_formula() -> None:
    with pytest.raises(InvalidLayerSpec, match=r"\(W - F\) / S \+ 1 = \(13 - 2\) / 2 \+ 1 = 6\.5"):
        pool_output_size(13, 2, 2, strict=True)
    with pytest.raises(InvalidLayerSpec, match=r"\(3 - 4\) / 1 \+ 1 is below 1"):
        pool_output_size(3, 4, 1)
    assert pool_output_size(13, 2, 2) == 6


def test_average_pooling_follows_the_same_arithmetic_as_max_pooling() -> None:
    stack: list[dict[str, Any]] = [{"type": "avg_pool", "pool": 3, "stride": 2}]
    (row,) = layer_table((15, 15, 8), stack).rows
    assert (row.name, row.output_shape, row.params) == ("average_pooling2d", (7, 7, 8), 0)


def test_strict_conv_stride_that_does_not_divide_is_refused_with_the_formula() -> None:
    spec = [{"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2}]
    assert layer_table((32, 32, 3), spec).rows[0].output_shape == (15, 15, 4)
    with pytest.raises(InvalidLayerSpec, match=r"layer 0 \(conv2d.*\(32 - 3 \+ 2\*0\) / 2 \+ 1"):
        layer_table((32, 32, 3), spec, strict=True)


ABSURD: list[tuple[tuple[int, ...], list[dict[str, Any]], str]] = [
    ((MAX_DIM, MAX_DIM, 3), [], "absurdly large"),
    ((32, 32, 3), [{"type": "conv2d", "filters": MAX_DIM + 1, "kernel": 3}], "between 1"),
    ((1024, 1024, 3), [{"type": "conv2d", "filters": 4096, "kernel": 1}], "absurdly large"),
    ((32, 32, 3), [{"type": "flatten"}] * (MAX_LAYERS + 1), "more than the limit"),
    ((32, 32, 3), [{"type": "conv2d", "filters": 4, "kernel": 3, "bias": "no"}], "'bias'"),
    ((32, 32, 3), [{"type": "conv2d", "filters": 4, "kernel": [3, 5]}], "'kernel'"),
    ((32, 32, 3), [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": -1}], "padding"),
    ((32, 32), [], "(H, W, C)"),
    ((32, 0, 3), [], "(H, W, C)"),
]


@pytest.mark.parametrize(("input_shape", "spec", "message"), ABSURD)
def test_absurd_and_malformed_stacks_are_refused(
    input_shape: tuple[int, ...], spec: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(InvalidLayerSpec) as info:
        layer_table(input_shape, spec)
    assert message in info.value.message
