"""Reading feature grids (the explorer's PNG of a layer's channels) back."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def count_tiles(data: bytes) -> int:
    """Tiles in a feature grid, found by colour: only tiles hold non-grey (viridis) pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    coloured = (pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])

    def runs(mask: np.ndarray) -> list[tuple[int, int]]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        return list(zip(edges[::2], edges[1::2], strict=True))

    tiles = 0
    for top, bottom in runs(coloured.any(axis=1)):
        tiles += len(runs(coloured[top:bottom].any(axis=0)))
    return tiles
