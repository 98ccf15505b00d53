"""Models built from layer specs agree with the pure arithmetic, layer by layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.core.errors import InvalidLayerSpec
from service.core.shapes import layer_table
from training.architectures import ARCHITECTURES, LECTURE
from training.model import (
    Classifier,
    build_layers,
    count_parameters,
    init_from_data,
    keras_init,
    whitening_weights,
)


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
    model = Classifier(layers)
    assert count_parameters(model) == table.total_params
    learned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert learned == table.trainable_params


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


def _correlated_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images whose neighbouring pixels and channels are strongly correlated."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8, 8, 1)).repeat(4, axis=1).repeat(4, axis=2)  # 4x4 blocks
    noise = rng.normal(scale=0.2, size=(n, 32, 32, 3))
    tint = np.array([1.0, 0.8, 0.6])
    return np.clip(128 + 40 * (base * tint + noise), 0, 255).astype(np.uint8)


def test_whitening_decorrelates_patches_to_unit_variance() -> None:
    images = torch.from_numpy(_correlated_images(64)).permute(0, 3, 1, 2).float() / 255
    weight, bias = whitening_weights(images, kernel=2, eps=1e-6)
    assert weight.shape == (24, 3, 2, 2) and bias.shape == (24,)
    torch.testing.assert_close(weight[12:], -weight[:12])  # each direction and its negative
    out = torch.nn.functional.conv2d(images, weight, bias)[:, :12]
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert flat.mean(0).abs().max() < 1e-3
    covariance = torch.cov(flat.T)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=2e-2, rtol=0)
    raw = torch.nn.functional.unfold(images, 2).transpose(1, 2).reshape(-1, 12).double()
    raw_cov = torch.cov(raw.T)
    assert (raw_cov / raw_cov.diagonal().sqrt().outer(raw_cov.diagonal().sqrt())).min() > 0.5


def test_the_whitening_layer_is_set_from_data_and_stays_frozen() -> None:
    layers = ARCHITECTURES["cifar_whiten"]
    torch.manual_seed(0)
    model = Classifier(layers)
    keras_init(model)
    whitening = model.net[0]
    assert isinstance(whitening, torch.nn.Conv2d)
    before = whitening.weight.detach().clone()
    images = _correlated_images(32)
    init_from_data(model, layers, images)
    whitened = whitening.weight.detach().clone()
    assert not torch.equal(before, whitened)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss = model(torch.from_numpy(images)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(whitening.weight, whitened)
    row = layer_table((32, 32, 3), layers).rows[0]
    assert row.trainable_params == 0 and row.params == 24 * 12 + 24 and "frozen" in row.note


def test_whitening_is_refused_where_it_cannot_apply() -> None:
    images = _correlated_images(4)
    conv: dict[str, Any] = {"type": "conv2d", "filters": 24, "kernel": 2, "init": "whiten"}
    head: list[dict[str, Any]] = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    later: list[dict[str, Any]] = [{"type": "conv2d", "filters": 3, "kernel": 1}, conv, *head]
    with pytest.raises(InvalidLayerSpec, match="only the first conv2d"):
        init_from_data(Classifier(later), later, images)
    narrow = [{**conv, "filters": 8}, *head]
    with pytest.raises(InvalidLayerSpec, match="needs 2 x C x kernel x kernel = 24 filters"):
        init_from_data(Classifier(narrow), narrow, images)
    unknown = [{**conv, "init": "orthogonal"}, *head]
    with pytest.raises(InvalidLayerSpec, match="'orthogonal'"):
        init_from_data(Classifier(unknown), unknown, images)
