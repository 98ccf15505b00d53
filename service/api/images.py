"""Image files (PNG, JPEG, GIF, BMP, WebP, TIFF...) to model pixels, the documented way.

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
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, ImageMath, ImageOps, PngImagePlugin, UnidentifiedImageError

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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG's chunks, walked before Pillow opens it: an ICC profile may come once (the PNG spec), and
# ancillary chunks at most as libpng's own default cache allows; the total bounds the walk (a
# 64 MiB file holds 8,192 chunks of libpng's 8 kB IDAT, or 5.6 million empty ones).
MAX_PNG_CHUNKS = 65_536
MAX_PNG_ANCILLARY_CHUNKS = 1_000
# A progressive JPEG's decoder walks every 8x8 block of the full-size image once per scan, at any
# draft scale, and libjpeg sets no limit: 3,000 repeated 16-byte scans (48 kB) took 5 s. Encoders
# write about 10 (libjpeg-turbo's djpeg suggests -maxscans 100 for untrusted files).
MAX_JPEG_SCANS = 100
SCANS_CHARGED_AS_ONE = 10  # a progressive JPEG counts its full size once per this many scans
# Pillow inflates every zTXt and iTXt chunk (and iCCP) while it opens a PNG, about 1,000:1, up to
# 1 MiB a chunk and 64 MiB a file by default: 62 MiB of text from a 64 kB file. The service reads
# no image text; a file past these is refused (_pillow_errors).
PngImagePlugin.MAX_TEXT_CHUNK = 32 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 32 * 1024
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
        raise UnprocessableInput(f"{where}: not an image Pillow can decode") from None
    except ValueError as exc:
        if "MAX_TEXT" not in str(exc):  # Pillow's words for PngImagePlugin's two text caps
            raise UnprocessableInput(f"{where}: undecodable image ({exc})") from None
        raise UnprocessableInput(
            f"{where}: the PNG's text chunks (zTXt, iTXt, tEXt) or ICC profile hold more than the "
            f"limit of {PngImagePlugin.MAX_TEXT_MEMORY} bytes (this service reads no image text)"
        ) from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise UnprocessableInput(f"{where}: undecodable image ({exc})") from None


def _jpeg_scans(opened: Image.Image, data: bytes, where: str) -> int:
    """A JPEG's scans, counted by their SOS markers (entropy-coded data stuffs every 0xFF, so
    only metadata could add a few more); more than ``MAX_JPEG_SCANS`` is a 422. 0 for others."""
    if opened.format not in ("JPEG", "MPO"):
        return 0
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UnprocessableInput(
            f"{where}: a JPEG of {scans} scans, more than the limit of {MAX_JPEG_SCANS}"
        )
    return scans


def _open(
    data: bytes, size: tuple[int, int], max_pixels: int, where: str
) -> tuple[Image.Image, int]:
    """The image's header only, checked against ``max_pixels`` (and a JPEG's scans) and set to
    decode JPEGs at a reduced scale, and the pixels it counts for (``ImageLimits``); nothing is
    decoded yet."""
    if not data:
        raise UnprocessableInput(f"{where}: the image is empty")
    if data.startswith(PNG_SIGNATURE):
        _check_png_chunks(data, where)
    height, width = size
    with _pillow_errors(where, max_pixels):
        opened = Image.open(io.BytesIO(data))
        full = opened.width * opened.height
        if full > max_pixels:
            raise UnprocessableInput(
                f"{where}: {opened.width}x{opened.height} pixels, more than the limit of "
                f"{max_pixels}"
            )
        scans = _jpeg_scans(opened, data, where)
        opened.seek(0)
        opened.draft("RGB", (width * 2, height * 2))  # JPEG: decode at a reduced scale
        if opened.info.get("progressive"):  # each scan walks every block at full size
            return opened, full * max(scans, SCANS_CHARGED_AS_ONE) // SCANS_CHARGED_AS_ONE
        return opened, opened.width * opened.height


def _decode(opened: Image.Image, size: tuple[int, int], max_pixels: int, where: str) -> np.ndarray:
    """``opened`` at ``size``; its full-size pixels are let go before the next image is decoded
    (turned in place, not copied, and closed), not held until the whole request is."""
    height, width = size
    try:
        with _pillow_errors(where, max_pixels):
            ImageOps.exif_transpose(opened, in_place=True)
            image = opened
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
    opened = [(*_open(data, size, limits.max_image_pixels, where), where) for data, where in files]
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


def _check_inline(files: int, size: int) -> None:
    """Too many files, or bytes, for the event loop, counted before any is opened (or decoded
    from base64): to the work pool."""
    if (files > INLINE_FILES or size > INLINE_IMAGE_BYTES) and on_event_loop():
        raise TooHeavyForTheLoop


def _check_png_chunks(data: bytes, where: str) -> None:
    """422 for a PNG of more than one ICC profile, or past ``MAX_PNG_ANCILLARY_CHUNKS``
    ancillary chunks or ``MAX_PNG_CHUNKS`` chunks in all: Pillow inflates every profile (a
    64 MiB body of them would be 64 GB to inflate) and walks every chunk in Python."""
    offset, chunks, ancillary, profiles = len(PNG_SIGNATURE), 0, 0, 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"IEND":
            return
        chunks += 1
        ancillary += kind[0] >> 5 & 1  # a lower-case first letter
        profiles += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS or profiles > 1:
            what = "more than one ICC profile" if profiles > 1 else "too many chunks"
            raise UnprocessableInput(
                f"{where}: a PNG of {what} (at most one profile, {MAX_PNG_CHUNKS} chunks, "
                f"{MAX_PNG_ANCILLARY_CHUNKS} of them ancillary)"
            )
        offset += 12 + length


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
    small = sum(len(data) for data, _ in files) <= min(settings.inline_decode_bytes,
                                                        INLINE_IMAGE_BYTES)  # fmt: skip
    light = small and len(files) <= INLINE_FILES
    limits = image_limits(settings)
    return await work.run_here_if_light(light, decode_images, files, size, limits)


def b64_bytes(text: str, where: str) -> bytes:
    """A ``{"b64": ...}`` value's bytes; 422 naming ``where`` if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnprocessableInput(f"{where}: 'b64' is not valid base64") from None
