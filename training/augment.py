"""Data augmentation on whole batches as tensor ops: random crop (translate with reflection),
horizontal flip, cutout. Works on uint8 NHWC pixels, before the model scales them, on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUGMENTS = ("none", "flip", "flip-crop", "flip-crop-cutout")


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    pad: int = 0  # largest shift in pixels, reflected at the border
    cutout: int = 0  # side of the zeroed square (0: none)


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside [0, size) mirrored back inside, as reflect padding does."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def alternating_flips(n_images: int, epoch: int, seed: int) -> torch.Tensor:
    """Which of ``n_images`` are mirrored in ``epoch`` (1-based) under airbench's derandomized flip.

    A coin per image decides its first epoch; after that every image alternates, so any two
    consecutive epochs show each image both ways (a random flip repeats itself half the time).
    """
    first = torch.randint(0, 2, (n_images,), generator=torch.Generator().manual_seed(seed))
    return (first ^ ((epoch - 1) % 2)).bool()  # (N,)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    augment: Augment,
    mirrored: torch.Tensor | None = None,
) -> torch.Tensor:
    """A randomly flipped, shifted (up to ``augment.pad`` pixels, reflected at the border) and
    cut-out copy of ``images`` (N, H, W, C); each image draws its own, from ``generator``.

    ``mirrored`` (N,) bool: which images to flip, instead of a coin per image (alternating flip).
    """
    flip, pad, cutout = augment.flip, augment.pad, augment.cutout
    n, h, w, _ = images.shape
    device = images.device

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator).to(device)

    rows = torch.arange(h, device=device).expand(n, h)  # (N, H)
    cols = torch.arange(w, device=device).expand(n, w)  # (N, W)
    if flip:
        mirror = (draw(2).bool() if mirrored is None else mirrored.to(device))[:, None]
        cols = torch.where(mirror, w - 1 - cols, cols)
    if pad > 0:
        rows = reflect_index(rows + (draw(2 * pad + 1) - pad)[:, None], h)
        cols = reflect_index(cols + (draw(2 * pad + 1) - pad)[:, None], w)
    batch = torch.arange(n, device=device)[:, None, None]
    out = images[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    if cutout > 0:
        top, left = draw(h - cutout + 1), draw(w - cutout + 1)
        y = torch.arange(h, device=device)[None, :, None]
        x = torch.arange(w, device=device)[None, None, :]
        inside = (
            (y >= top[:, None, None])
            & (y < (top + cutout)[:, None, None])
            & (x >= left[:, None, None])
            & (x < (left + cutout)[:, None, None])
        )
        out = out.masked_fill(inside[..., None], 0)
    return out


def augment_options(name: str, pad: int, cutout: int) -> Augment | None:
    """What ``augment_batch`` does for the ``--augment`` name; None for no augmentation."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTS)}")
    if name == "none":
        return None
    return Augment(
        flip=True, pad=pad if "crop" in name else 0, cutout=cutout if "cutout" in name else 0
    )
