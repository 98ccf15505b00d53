"""Batch augmentation: each output is a flip, a reflected shift or a cut-out of its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.errors import InvalidConfig
from tests.support.training_inputs import class_images
from training.augment import Augment, alternating_flips, augment_batch, augment_options
from training.config import TrainConfig
from training.data import Split, train_val_split
from training.train import train_model


def _images(n: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(1, 256, size=(n, 8, 8, 3), dtype=np.uint8))


def test_flip_gives_the_image_or_its_mirror_and_both_happen() -> None:
    images = _images()
    out = augment_batch(images, torch.Generator().manual_seed(0), Augment(flip=True))
    flipped = [bool(torch.equal(o, i.flip(1))) for o, i in zip(out, images, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_crop_is_a_shift_of_the_reflect_padded_image() -> None:
    pad = 2
    images = _images()
    out = augment_batch(images, torch.Generator().manual_seed(1), Augment(flip=False, pad=pad))
    shifts = set()
    for o, i in zip(out.numpy(), images.numpy(), strict=True):
        padded = np.pad(i, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(padded[dy : dy + 8, dx : dx + 8], o)
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 3  # images draw their own shifts


def test_cutout_zeroes_one_square_per_image() -> None:
    images = _images()
    out = augment_batch(images, torch.Generator().manual_seed(2), Augment(flip=False, cutout=3))
    zeroed = (out == 0).all(dim=-1).sum(dim=(1, 2))
    assert zeroed.tolist() == [9] * len(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_same_seed_same_augmentation_and_names_map_to_options() -> None:
    images = _images()
    options = augment_options("flip-crop-cutout", 4, 8)
    assert options == Augment(flip=True, pad=4, cutout=8)
    assert augment_options("none", 4, 8) is None
    assert augment_options("flip-crop", 4, 8) == Augment(flip=True, pad=4, cutout=0)
    a = augment_batch(images, torch.Generator().manual_seed(3), Augment(pad=2, cutout=2))
    b = augment_batch(images, torch.Generator().manual_seed(3), Augment(pad=2, cutout=2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_options("rotate", 4, 8)


def test_stronger_recipe_options_train_and_lower_the_loss() -> None:
    images, labels = class_images(30, seed=0)
    fit, val = train_val_split(Split(images, labels), 60, 0)
    config = TrainConfig(
        arch="lecture_bn",
        epochs=3,
        batch_size=32,
        val_size=60,
        threads=1,
        optimizer="sgd",
        lr=0.05,
        weight_decay=5e-4,
        label_smoothing=0.1,
        schedule="onecycle",
        augment="flip-crop-cutout",
        cutout_size=4,
        autocast="bf16",
    )
    result = train_model(config, fit, val, log=lambda line: None)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_alternating_flip_shows_every_image_both_ways_across_two_epochs() -> None:
    n = 64
    first, second, third = (alternating_flips(n, epoch, seed=5) for epoch in (1, 2, 3))
    assert torch.equal(second, ~first)  # each image the other way round in the next epoch
    assert torch.equal(third, first)
    assert 16 < int(first.sum()) < 48  # a coin per image decides where it starts
    assert not torch.equal(alternating_flips(n, 1, seed=6), first)
    images = _images(n)
    seen: dict[int, set[bool]] = {i: set() for i in range(n)}
    for flips in (first, second):
        out = augment_batch(images, torch.Generator().manual_seed(0), Augment(), flips)
        for i in range(n):
            if torch.equal(out[i], images[i].flip(1)):
                seen[i].add(True)
            elif torch.equal(out[i], images[i]):
                seen[i].add(False)
    assert all(ways == {True, False} for ways in seen.values())


def test_random_flip_leaves_some_images_one_way_round_over_two_epochs() -> None:
    """What the alternating flip fixes: with a coin per step, about half the images are shown
    the same way in both epochs."""
    images = _images(64)
    rng = torch.Generator().manual_seed(0)
    outs = [augment_batch(images, rng, Augment()) for _ in range(2)]
    same = sum(bool(torch.equal(outs[0][i], outs[1][i])) for i in range(64))
    assert same > 16


def test_alternate_flip_needs_an_augmentation_that_flips() -> None:
    images, labels = class_images(3, seed=0)
    fit, val = train_val_split(Split(images, labels), 10, 0)
    config = TrainConfig(epochs=1, val_size=10, threads=1, flip="alternate")
    with pytest.raises(InvalidConfig, match="--flip alternate"):
        train_model(config, fit, val, log=lambda line: None)
