"""What the training tests feed training: small CIFAR-10 look-alikes they make themselves (an image
folder, python batches) and a tiny architecture of airbench's shape (``TINY_94``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data import CLASS_NAMES


def class_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class has its own mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, size=(len(CLASS_NAMES), 3))
    labels = np.repeat(np.arange(len(CLASS_NAMES)), n_per_class)
    noise = rng.integers(-30, 30, size=(len(labels), 32, 32, 3))
    images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_image_folder(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """``<root>/<split>/<class>/NNNN.png`` (lossless, so pixels can be compared exactly)."""
    for split, n, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        images, labels = class_images(n, seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def write_python_batches(root: Path, per_batch: int = 20) -> Path:
    """The official layout: pickled dicts with b'data' (N, 3072) CHW rows and b'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        images, labels = class_images(per_batch // 10, seed)
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        with (folder / name).open("wb") as fh:
            pickle.dump({b"data": rows, b"labels": labels.tolist()}, fh)
    return folder


# airbench's network shape, tiny: a frozen whitening stem, a Dirac-initialised conv, a batch norm
# without learned scale, and a bias-free head whose logits are scaled by 1/9.
TINY_94: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 24, "kernel": 2, "init": "whiten", "trainable": False},
    {"type": "activation", "fn": "gelu"},  # (31, 31, 24)
    {
        "type": "conv2d",
        "filters": 8,
        "kernel": 3,
        "padding": "same",
        "bias": False,
        "init": "dirac",
    },
    {"type": "max_pool", "pool": 2},  # (15, 15, 8)
    {"type": "batch_norm", "scale": False, "momentum": 0.6},
    {"type": "activation", "fn": "gelu"},
    {"type": "max_pool", "pool": 5},  # (3, 3, 8)
    {"type": "flatten"},  # (72,)
    {"type": "dense", "units": 10, "bias": False, "output_scale": 1 / 9},
]
