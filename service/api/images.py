"""Image files (PNG, JPEG, GIF, BMP, WebP, TIFF; no other) to model pixels, the documented way.

1. Decode the first frame with Pillow and apply its EXIF orientation.
2. 16-bit and 32-bit grayscale are scaled to 8 bits by their full range (16-bit by 65535, 32-bit
   and float by the image's maximum, negatives as 0), resized (step 5) before they are scaled.
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
from typing import cast

import numpy as np
from PIL import ExifTags, Image, ImageMath, UnidentifiedImageError

from service.api.image_files import (
    GIF_STARTS,
    JPEG_START,
    MAX_JPEG_SCANS,
    PNG_SIGNATURE,
    gif_checked,
    jpeg_scans,
    png_without_text,
)
from service.api.tiff_directory import PIECE_PIXELS, is_tiff, tiff_pieces
from service.core.errors import PayloadTooLarge, UnprocessableInput
from service.engine.work_pool import TooHeavyForTheLoop, WorkPool, on_event_loop
from service.settings import Settings

WHITE = (255, 255, 255)
# Pixels decoded right on the event loop when the files are small too (a 256x256 PNG, about 1 ms
# here; a CIFAR image is 1,024): more go to the work pool, the thread hop being worth it then.
INLINE_PIXELS = 65_536
# Files decoded right on the event loop: each costs about 0.1 ms whatever its size (open, EXIF,
# convert, resize), so 1,024 one-pixel files held the loop 100-160 ms. Counted before any header
# is opened (opening 1,024 costs tens of ms too).
INLINE_FILES = 16
# Bytes of image files decoded right on the event loop (a CIFAR-sized PNG is about 3 kB): Pillow
# walks a PNG's chunks in Python as it opens it, 3 us each, and inflates every ICC profile, so
# 128 kB of empty chunks held the loop 30 ms and of repeated profiles 55 ms.
INLINE_IMAGE_BYTES = 16_384
SCANS_CHARGED_AS_ONE = 10  # a progressive JPEG counts its full size once per this many scans
# What Pillow may open: the formats documented and tested. It would try every plugin it has
# (PSD, ICO, FITS, XPM...), some of which walk their headers in Python unbounded.
SERVED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG: MPO too
ORIENTATIONS = {  # an EXIF orientation: how to turn the image upright (as ImageOps does)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # scaled to 8 bits by _scaled_to_8_bits
# Pillow's decompression-bomb warning (over 89 M pixels) is an error in this process: such a file
# is refused from its header. Set once here, not per image with ``warnings.catch_warnings``, which
# swaps the process-wide filters and so races between the work pool's threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _scaled_to_8_bits(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A 16- or 32-bit grayscale image as 8-bit ``L`` of ``size`` (W, H), scaled by its full
    range (16-bit by 65535, 32-bit and float by the image's max, negatives black). Resized first
    in Pillow's own mode, so that only ``size``'s pixels are scaled: a float64 copy of the whole
    image, scaled with temporaries, took about 30 bytes a pixel."""
    if image.mode.startswith("I;16"):
        top = 65535.0
        if image.mode != "I;16":
            image = image.convert("I")  # Pillow resizes only little-endian 16-bit right
    else:
        extrema = image.getextrema()  # the full image's range, read without a copy
        low, high = cast(tuple[float, float], extrema)
        if low < 0:  # black, as they were when clipped after scaling, not averaged in
            image = ImageMath.lambda_eval(lambda env: env["max"](env["image"], 0), image=image)
        top = max(float(high), 1.0 if image.mode == "I" else 1e-12)
    small = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    scaled = np.nan_to_num(small / top * 255.0)  # NaN is black, as before
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # no copy: resized next


@dataclass(frozen=True)
class ImageLimits:
    """What decoding one request's images may cost: each image's pixels as its header states
    them, and all of its images' pixels at the scale they are decoded at (a baseline JPEG's
    reduced draft scale, a PNG's full size), summed; a progressive JPEG, whose every scan walks
    the full-size image whatever the draft scale, counts its full size once per 10 scans (at
    least once)."""

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
        served = ", ".join(SERVED_FORMATS)
        raise UnprocessableInput(
            f"{where}: not a decodable image of a format served ({served})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnprocessableInput(f"{where}: undecodable image ({exc})") from None


def _open(
    data: bytes, size: tuple[int, int], limits: ImageLimits, where: str
) -> tuple[Image.Image, int]:
    """The image's header only, checked against ``max_pixels`` (and a file's structure: its
    chunks, segments, scans, blocks or strips) and set to decode JPEGs at a reduced scale, and
    the pixels it counts for (``ImageLimits``); nothing is decoded yet."""
    if not data:
        raise UnprocessableInput(f"{where}: the image is empty")
    max_pixels, scans, pieces = limits.max_image_pixels, 0, 0
    if data.startswith(PNG_SIGNATURE):
        data = png_without_text(data, where)
    elif data.startswith(JPEG_START):  # its segments bounded before Pillow walks them
        scans = jpeg_scans(data, where)
    elif is_tiff(data):
        pieces = tiff_pieces(data, max_pixels, limits.max_request_pixels, where)
    elif data.startswith(GIF_STARTS):
        gif_checked(data, where)
    height, width = size
    with _pillow_errors(where, max_pixels):
        opened = Image.open(io.BytesIO(data), formats=SERVED_FORMATS)
        full = opened.width * opened.height
        if full > max_pixels:
            raise UnprocessableInput(
                f"{where}: {opened.width}x{opened.height} pixels, more than the limit of "
                f"{max_pixels}"
            )
        opened.seek(0)
        opened.draft("RGB", (width * 2, height * 2))  # JPEG: decode at a reduced scale
        if opened.info.get("progressive"):  # each scan walks every block at full size
            return opened, full * max(scans, SCANS_CHARGED_AS_ONE) // SCANS_CHARGED_AS_ONE
        return opened, opened.width * opened.height + pieces * PIECE_PIXELS  # a TIFF's pieces


def _decode(opened: Image.Image, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    """``opened`` at ``size``, turned by its EXIF orientation; its full-size pixels are let go
    before the next image is decoded (closed), not held until the whole request is."""
    height, width = size
    try:
        with _pillow_errors(where, max_pixels):
            opened.load()  # Pillow's exif_transpose also writes the EXIF back, 1 ms a kB of it
            turn = ORIENTATIONS.get(opened.getexif().get(ExifTags.Base.Orientation, 1))
            image = opened.transpose(turn) if turn is not None else opened
            if image.mode in WIDE_GRAY:
                image = _scaled_to_8_bits(image, (width, height))
            rgb = _to_rgb(image).resize((width, height), Image.Resampling.BILINEAR)
    finally:
        opened.close()  # Image's own ``with`` releases nothing
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(
    files: Sequence[tuple[bytes, str]], size: tuple[int, int], limits: ImageLimits
) -> list[np.ndarray]:
    """Encoded images, each ``(data, where)``, as ``(H, W, 3)`` uint8 RGB of ``size`` (H, W).
    Every header is read and the pixels counted (``ImageLimits``) before any image is decoded:
    past the request's budget the answer is a 413 that cost no decoding. On the event loop, more
    than ``INLINE_FILES`` files, ``INLINE_IMAGE_BYTES`` or ``INLINE_PIXELS`` pixels go to the
    work pool."""
    _check_inline(len(files), sum(len(data) for data, _ in files))
    opened = [(*_open(data, size, limits, where), where) for data, where in files]
    total = sum(pixels for _, pixels, _ in opened)
    if total > limits.max_request_pixels:
        how = ""
        if any(image.info.get("progressive") for image, _, _ in opened):
            how = f" (progressive JPEGs at full size, once per {SCANS_CHARGED_AS_ONE} scans)"
        raise PayloadTooLarge(
            f"the images decode to {total} pixels{how}, more than the limit of "
            f"{limits.max_request_pixels} per request"
        )
    if total > INLINE_PIXELS and on_event_loop():
        raise TooHeavyForTheLoop  # decoded on the work pool instead
    return [_decode(image, size, limits.max_image_pixels, where) for image, _, where in opened]


def _few_and_small(files: int, size: int) -> bool:
    """Whether ``files`` files of ``size`` bytes in all may be decoded on the event loop."""
    return files <= INLINE_FILES and size <= INLINE_IMAGE_BYTES


def _check_inline(files: int, size: int) -> None:
    """Too many files, or bytes, for the event loop, counted before any is opened (or decoded
    from base64): to the work pool."""
    if not _few_and_small(files, size) and on_event_loop():
        raise TooHeavyForTheLoop


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    """One encoded image as ``(H, W, 3)`` uint8 RGB of ``size`` (H, W); 422 naming ``where``.
    Only the image's own limits apply (its pixels, a JPEG's scans), not a request's budget."""
    most = max_pixels * MAX_JPEG_SCANS // SCANS_CHARGED_AS_ONE  # a progressive JPEG's at most
    return decode_images([(data, where)], size, ImageLimits(max_pixels, most))[0]


def decode_b64_images(
    encoded: Sequence[tuple[str, str]], size: tuple[int, int], limits: ImageLimits
) -> list[np.ndarray]:
    """``decode_images`` for ``{"b64": ...}`` values, each ``(text, where)``."""
    _check_inline(len(encoded), sum(len(text) for text, _ in encoded) * 3 // 4)
    return decode_images([(b64_bytes(text, where), where) for text, where in encoded], size, limits)


async def decode_image_files(
    work: WorkPool, files: Sequence[tuple[bytes, str]], size: tuple[int, int], settings: Settings
) -> list[np.ndarray]:
    """``decode_images`` on the event loop when the files are few and small (and decode to few
    pixels), else on the work pool."""
    nbytes = sum(len(data) for data, _ in files)
    light = _few_and_small(len(files), nbytes) and nbytes <= settings.inline_decode_bytes
    limits = image_limits(settings)
    return await work.run_here_if_light(light, decode_images, files, size, limits)


def b64_bytes(text: str, where: str) -> bytes:
    """A ``{"b64": ...}`` value's bytes; 422 naming ``where`` if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnprocessableInput(f"{where}: 'b64' is not valid base64") from None
