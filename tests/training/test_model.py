"""Models built from layer specs agree with the pure arithmetic, layer by layer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from service.core.shapes import layer_table
from training.architectures import ARCHITECTURES, LECTURE
from training.model import Classifier, build_layers, count_parameters


def _output_shapes(layers: list[dict[str, Any]], hw: tuple[int, int, int]) -> list[tuple[int, ...]]:
    net = build_layers(layers, hw).eval()
    shapes: list[tuple[int, ...]] = []
    x = torch.zeros(2, hw[2], hw[0], hw[1])
    for module in net:
        x = module(x)
        # torch is NCHW; the table is HWC like Keras
        shapes.append((*x.shape[2:], x.shape[1]) if x.dim() == 4 else tuple(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_built_model_matches_layer_table(arch: str) -> None:
    layers = ARCHITECTURES[arch]
    table = layer_table((32, 32, 3), layers)
    assert _output_shapes(layers, (32, 32, 3)) == [r.output_shape for r in table.rows]
    assert count_parameters(Classifier(layers)) == table.total_params


def test_lecture_model_has_122570_parameters() -> None:
    assert count_parameters(Classifier(LECTURE)) == 122_570


def test_same_padding_with_stride_matches_keras_sizes() -> None:
    layers: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        {"type": "conv2d", "filters": 4, "kernel": 5, "padding": 2, "activation": "relu"},
        {"type": "avg_pool", "pool": 3, "stride": 2},
        {"type": "batch_norm"},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 7, "activation": "tanh"},
        {"type": "batch_norm"},
    ]
    expected = [r.output_shape for r in layer_table((16, 15, 3), layers).rows]
    assert _output_shapes(layers, (16, 15, 3)) == expected


def test_classifier_takes_uint8_pixels_and_scales_inside() -> None:
    model = Classifier(LECTURE).eval()
    pixels = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    scaled = torch.ones(1, 3, 32, 32)
    torch.testing.assert_close(model(pixels), model.net(scaled))
