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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.core.errors import PayloadTooLarge, UnprocessableInput
from service.engine.work_pool import TooHeavyForTheLoop, WorkPool, on_event_loop
from service.settings import Settings

WHITE = (255, 255, 255)
# Pixels decoded right on the event loop when the files are small too (a 256x256 PNG, about 1 ms
# here; a CIFAR image is 1,024): more go to the work pool, the thread hop being worth it then.
INLINE_PIXELS = 65_536
# Pillow's decompression-bomb warning (over 89 M pixels) is an error in this process: such a file
# is refused from its header. Set once here, not per image with ``warnings.catch_warnings``, which
# swaps the process-wide filters and so races between the work pool's threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


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


@dataclass(frozen=True)
class ImageLimits:
    """What decoding one request's images may cost: each image's pixels as its header states
    them, and all of its images' pixels at the scale they are decoded at (a JPEG's reduced draft
    scale, a PNG's full size), summed."""

    max_image_pixels: int
    max_request_pixels: int


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(settings.max_image_pixels, settings.max_request_pixels)


@contextmanager
def _pillow_errors(where: str, max_pixels: int) -> Iterator[None]:
    """Pillow's complaints about one image as a 422 naming ``where``."""
    try:
        yield
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


def _open(data: bytes, size: tuple[int, int], max_pixels: int, where: str) -> Image.Image:
    """The image's header only, checked against ``max_pixels`` and set to decode JPEGs at a
    reduced scale; nothing is decoded yet."""
    if not data:
        raise UnprocessableInput(f"{where}: the image is empty")
    height, width = size
    with _pillow_errors(where, max_pixels):
        opened = Image.open(io.BytesIO(data))
        if opened.width * opened.height > max_pixels:
            raise UnprocessableInput(
                f"{where}: {opened.width}x{opened.height} pixels, more than the limit of "
                f"{max_pixels}"
            )
        opened.seek(0)
        opened.draft("RGB", (width * 2, height * 2))  # JPEG: decode at a reduced scale
        return opened


def _decode(opened: Image.Image, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    height, width = size
    with _pillow_errors(where, max_pixels):
        image = ImageOps.exif_transpose(opened)
        rgb = _to_rgb(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(
    files: Sequence[tuple[bytes, str]], size: tuple[int, int], limits: ImageLimits
) -> list[np.ndarray]:
    """Encoded images, each ``(data, where)``, as ``(H, W, 3)`` uint8 RGB of ``size`` (H, W).
    Every header is read and the pixels counted before any image is decoded: past the request's
    budget the answer is a 413 that cost no decoding."""
    opened = [(_open(data, size, limits.max_image_pixels, where), where) for data, where in files]
    total = sum(image.width * image.height for image, _ in opened)
    if total > limits.max_request_pixels:
        raise PayloadTooLarge(
            f"the images decode to {total} pixels, more than the limit of "
            f"{limits.max_request_pixels} per request"
        )
    if total > INLINE_PIXELS and on_event_loop():
        raise TooHeavyForTheLoop  # decoded on the work pool instead
    return [_decode(image, size, limits.max_image_pixels, where) for image, where in opened]


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    """One encoded image as ``(H, W, 3)`` uint8 RGB of ``size`` (H, W); 422 naming ``where``."""
    return decode_images([(data, where)], size, ImageLimits(max_pixels, max_pixels))[0]


def decode_b64_images(
    encoded: Sequence[tuple[str, str]], size: tuple[int, int], limits: ImageLimits
) -> list[np.ndarray]:
    """``decode_images`` for ``{"b64": ...}`` values, each ``(text, where)``."""
    return decode_images([(b64_bytes(text, where), where) for text, where in encoded], size, limits)


async def decode_image_files(
    work: WorkPool, files: Sequence[tuple[bytes, str]], size: tuple[int, int], settings: Settings
) -> list[np.ndarray]:
    """``decode_images`` on the event loop when the files are small (and decode to few pixels),
    else on the work pool."""
    light = sum(len(data) for data, _ in files) <= settings.inline_decode_bytes
    limits = image_limits(settings)
    return await work.run_here_if_light(light, decode_images, files, size, limits)


def b64_bytes(text: str, where: str) -> bytes:
    """A ``{"b64": ...}`` value's bytes; 422 naming ``where`` if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnprocessableInput(f"{where}: 'b64' is not valid base64") from None
