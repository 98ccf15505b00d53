"""Image files (PNG, JPEG, GIF, BMP, WebP, TIFF...) to model pixels, the documented way.

1. Decode the first frame with Pillow and apply its EXIF orientation.
2. 16-bit and 32-bit grayscale are scaled to 8 bits by their full range (``>> 8`` for 16-bit).
3. Transparency (RGBA, LA, palette with a transparent colour) is composited onto white.
4. Everything else is converted to RGB by Pillow (grayscale repeated, CMYK and YCbCr converted).
5. The whole image is resized to the model's H x W (32 x 32) with Pillow's bilinear filter, which
   averages over the source pixels when shrinking; the aspect ratio is not kept (no cropping),
   as Keras' ``load_img(target_size=...)`` does.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.core.errors import UnprocessableInput

WHITE = (255, 255, 255)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        if image.mode == "F":
            top = max(float(pixels.max()), 1e-12)
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    """One encoded image as ``(H, W, 3)`` uint8 RGB of ``size`` (H, W); 422 naming ``where``."""
    if not data:
        raise UnprocessableInput(f"{where}: the image is empty")
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            if opened.width * opened.height > max_pixels:
                raise UnprocessableInput(
                    f"{where}: {opened.width}x{opened.height} pixels, more than the limit of "
                    f"{max_pixels}"
                )
            opened.seek(0)
            opened.draft("RGB", (width * 2, height * 2))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(opened)
            rgb = _to_rgb(image).resize((width, height), Image.Resampling.BILINEAR)
    except UnprocessableInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, for sizes far past ours: refused by the header, never decoded.
        raise UnprocessableInput(
            f"{where}: the image claims more pixels than the limit of {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise UnprocessableInput(f"{where}: not an image Pillow can decode") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnprocessableInput(f"{where}: undecodable image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def decode_b64_image(text: str, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnprocessableInput(f"{where}: 'b64' is not valid base64") from None
    return decode_image(data, size, max_pixels, where)
