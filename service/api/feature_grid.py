"""Feature maps as one PNG: a labelled section per layer, one tile per channel.

Each tile is scaled to its own range (its minimum darkest, its maximum brightest) and coloured with
viridis, so every filter's response is visible whatever its magnitude; small maps are enlarged
with nearest-neighbour pixels. Text is grey and the background white, never a viridis colour, so
tiles can be found in the image by colour alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.core.errors import UnprocessableInput
from service.engine.activations import Activation

# matplotlib's viridis at 0, 1/8, ..., 1; interpolated linearly to 256 colours.
VIRIDIS_ANCHORS = [
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
]  # fmt: skip
BACKGROUND = (255, 255, 255)
TEXT = (64, 64, 64)
MIN_TILE_PX = 48  # small maps (4x4) are enlarged to at least this
MAX_WIDTH_PX = 1024
GAP_PX = 4
MARGIN_PX = 8
LABEL_PX = 12
HEADER_PX = 18


def viridis_lut() -> np.ndarray:
    """``(256, 3)`` uint8 colours."""
    anchors = np.array(VIRIDIS_ANCHORS, dtype=np.float64)
    x = np.linspace(0.0, 1.0, 256)
    stops = np.linspace(0.0, 1.0, len(anchors))
    return (
        np.stack([np.interp(x, stops, anchors[:, i]) for i in range(3)], axis=1)
        .round()
        .astype(np.uint8)
    )


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def scale_to_own_range(feature_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` floats to 0..255 by the map's own minimum and maximum (a flat map is all 0)."""
    lo, hi = float(feature_map.min()), float(feature_map.max())
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return np.zeros(feature_map.shape, dtype=np.uint8)
    return np.round((feature_map - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _layout(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(scale, tile height, tile width, columns) for a layer of ``(H, W, C)``."""
    h, w, c = shape
    scale = max(1, math.ceil(MIN_TILE_PX / max(h, w)))
    tile_h, tile_w = h * scale, w * scale
    columns = max(1, min(c, (MAX_WIDTH_PX - 2 * MARGIN_PX + GAP_PX) // (tile_w + GAP_PX)))
    return scale, tile_h, tile_w, columns


def render_feature_grid(activations: Sequence[Activation]) -> bytes:
    """One PNG holding every channel of every given (H, W, C) layer output."""
    for activation in activations:
        if activation.values.ndim != 3:
            layer = activation.layer
            raise UnprocessableInput(
                f"layer {layer.name} ({layer.type}) outputs {list(layer.shape)}: no feature maps "
                f"to draw; ask for JSON, or name a convolution or pooling layer"
            )
    lut = viridis_lut()
    sections = []
    width = height = 0
    for activation in activations:
        scale, tile_h, tile_w, columns = _layout(activation.values.shape)
        rows = math.ceil(activation.values.shape[2] / columns)
        section_h = HEADER_PX + rows * (LABEL_PX + tile_h + GAP_PX)
        sections.append((activation, scale, tile_h, tile_w, columns, height))
        width = max(width, columns * (tile_w + GAP_PX) - GAP_PX)
        height += section_h
    canvas = Image.new("RGB", (width + 2 * MARGIN_PX, height + 2 * MARGIN_PX), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for activation, scale, tile_h, tile_w, columns, top in sections:
        layer = activation.layer
        h, w, c = activation.values.shape
        y0 = MARGIN_PX + top
        header = f"{layer.name} ({layer.type}) {h}x{w}x{c}: each map scaled to its own range"
        draw.text((MARGIN_PX, y0 + 2), header, fill=TEXT, font=_font(12))
        for channel in range(c):
            row, column = divmod(channel, columns)
            x = MARGIN_PX + column * (tile_w + GAP_PX)
            y = y0 + HEADER_PX + row * (LABEL_PX + tile_h + GAP_PX)
            feature_map = activation.values[:, :, channel]
            flat = not float(feature_map.max()) > float(feature_map.min())
            label = f"{channel} flat" if flat else str(channel)
            draw.text((x, y), label, fill=TEXT, font=_font(10))
            levels = scale_to_own_range(feature_map)
            tile = lut[np.repeat(np.repeat(levels, scale, axis=0), scale, axis=1)]
            canvas.paste(Image.fromarray(tile, "RGB"), (x, y + LABEL_PX))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
