"""Models built from layer specs agree with the pure arithmetic, layer by layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.core.errors import InvalidLayerSpec
from service.core.shapes import layer_table
from tests.support.training_inputs import TINY_94
from training.architectures import ARCHITECTURES, LECTURE
from training.model import (
    Classifier,
    build_layers,
    count_parameters,
    dirac_,
    init_from_data,
    keras_init,
    tta_views,
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


@pytest.mark.parametrize(("c_in", "c_out"), [(4, 6), (6, 4)])
def test_dirac_init_makes_a_conv_the_identity_on_its_first_channels(c_in: int, c_out: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    dirac_(conv)
    x = torch.randn(2, c_in, 7, 7)
    out = conv(x)
    shared = min(c_in, c_out)
    torch.testing.assert_close(out[:, :shared], x[:, :shared])
    if c_out > c_in:  # the extra filters keep their random init
        assert conv.weight[c_in:].abs().sum() > 0
        assert not torch.allclose(out[:, c_in:], torch.zeros_like(out[:, c_in:]))


def test_dirac_init_applies_from_the_spec_and_needs_an_odd_kernel() -> None:
    torch.manual_seed(0)
    model = Classifier(TINY_94)
    init_from_data(model, TINY_94, _correlated_images(8))
    conv = model.net[2]
    assert isinstance(conv, torch.nn.Conv2d)
    x = torch.randn(1, 24, 5, 5)
    torch.testing.assert_close(conv(x)[:, :8], x[:, :8])
    even: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 4, "kernel": 2, "init": "dirac"},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]
    with pytest.raises(InvalidLayerSpec, match="odd square kernel"):
        init_from_data(Classifier(even), even, _correlated_images(2))


def test_batch_norm_without_scale_learns_only_its_bias() -> None:
    torch.manual_seed(0)
    model = Classifier(TINY_94)
    norm = model.net[4]
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.momentum == 0.6
    assert not norm.weight.requires_grad and norm.bias.requires_grad
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.from_numpy(_correlated_images(8))).logsumexp(1).mean().backward()
    optimizer.step()
    assert torch.equal(norm.weight, torch.ones(8)) and not torch.equal(norm.bias, torch.zeros(8))
    row = layer_table((32, 32, 3), TINY_94).rows[4]
    assert (row.params, row.trainable_params) == (32, 8) and "gamma fixed at 1" in row.note


def test_output_scale_multiplies_the_logits() -> None:
    torch.manual_seed(0)
    model = Classifier(TINY_94).eval()
    dense = model.net.get_submodule("dense")
    assert isinstance(dense, torch.nn.Sequential)
    features = torch.randn(3, 72)
    torch.testing.assert_close(dense(features), dense[0](features) / 9)


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, the border reflected (np.pad's 'reflect')."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    return padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def test_test_time_augmentation_averages_the_views_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    images = _correlated_images(5)
    plain = Classifier(TINY_94).eval()
    init_from_data(plain, TINY_94, images)

    def logits(x: np.ndarray) -> torch.Tensor:
        return plain(torch.from_numpy(np.ascontiguousarray(x)))

    mirror = images[:, :, ::-1]
    flip = Classifier(TINY_94, tta="flip").eval()
    flip.load_state_dict(plain.state_dict())
    torch.testing.assert_close(
        flip(torch.from_numpy(images)), (logits(images) + logits(mirror)) / 2
    )
    six = Classifier(TINY_94, tta="flip-translate").eval()
    six.load_state_dict(plain.state_dict())
    shifted = [_shift(images, -1, -1), _shift(images, 1, 1)]
    expected = (logits(images) + logits(mirror)) / 4 + sum(
        (logits(s) + logits(s[:, :, ::-1])) / 8 for s in shifted
    )
    out = six(torch.from_numpy(images))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out, expected)
    six.train()
    assert six(torch.from_numpy(images)).shape == (5, 10)  # training sees one view per image
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        tta_views("rotate", 32, 32)


@pytest.mark.parametrize("bf16", [False, True])
def test_training_pools_before_relu_with_the_same_bits(bf16: bool) -> None:
    """In training the lecture net max-pools before its ReLUs (a quarter of the elements): its
    logits and every gradient equal Keras' order's bit for bit, float32 and under bf16."""
    torch.manual_seed(0)
    model = Classifier(LECTURE)
    keras_init(model)
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,))

    def logits_and_grads(keras_order: bool) -> list[torch.Tensor]:
        model.train()
        model.zero_grad(set_to_none=True)
        x = images.permute(0, 3, 1, 2).float() / 255.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = torch.nn.Sequential.forward(model.net, x) if keras_order else model.net(x)
        torch.nn.functional.cross_entropy(out.float(), labels).backward()
        return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    pool_inputs: list[float] = []  # the first pool's smallest input: below 0 before a ReLU
    model.net[1].register_forward_hook(  # max_pooling2d
        lambda _module, args, _out: pool_inputs.append(float(args[0].detach().min()))
    )
    pooled_first, keras = logits_and_grads(False), logits_and_grads(True)
    assert pool_inputs[0] < 0 <= pool_inputs[1]  # the orders did differ
    assert len(pooled_first) == len(keras) == 11
    for a, b in zip(pooled_first, keras, strict=True):
        assert torch.equal(a, b)
    assert model.net._relu_before_pool == {0, 2}  # conv2d -> max_pooling2d, conv2d_1 -> ..._1


def test_a_relu_before_an_average_pool_keeps_its_place() -> None:
    """Only max-pooling commutes with ReLU; an average pool, or a pool after GELU, does not."""
    layers: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"type": "avg_pool", "pool": 2},
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "gelu"},
        {"type": "max_pool", "pool": 2},
        {"type": "activation", "fn": "relu"},
        {"type": "max_pool", "pool": 2},
    ]
    net = build_layers(layers, (20, 20, 3))
    assert net._relu_before_pool == {4}
    x = torch.randn(2, 3, 20, 20)
    assert torch.equal(net.train()(x), torch.nn.Sequential.forward(net, x))
