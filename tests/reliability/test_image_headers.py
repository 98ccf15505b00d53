"""Image headers that cost Pillow's open far more than their bytes (the twelfth audit): a TIFF
listing more strips than its rows, a JPEG of more segments than the limit, formats nobody
documented. Each is refused with a 422 before Pillow opens it; what Pillow itself writes is
still served."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.api import images
from service.api.image_files import MAX_JPEG_SEGMENTS, MAX_TIFF_ENTRIES
from service.api.images import decode_image
from service.core.errors import UnprocessableInput

MAX_PIXELS = 16_000_000


def tiff(entries: list[tuple[int, int, int, int]], tail: bytes = b"", order: str = "<") -> bytes:
    """A classic TIFF of one directory of (tag, type, count, value) entries, then ``tail``."""
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    packed = b"".join(
        struct.pack(order + "HHL", tag, kind, count)
        + (struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "L", value))
        for tag, kind, count, value in entries
    )
    return head + struct.pack(order + "H", len(entries)) + packed + b"\0\0\0\0" + tail


def strip_bomb(strips: int, order: str = "<") -> bytes:
    """A 1x2 gray uncompressed TIFF whose StripOffsets (SHORT) list one offset ``strips`` times:
    Pillow made an object of each, 500,000 of them (1 MB) in 2.3 s and 120 MB."""
    at = 8 + 2 + 12 * 9 + 4
    offsets = struct.pack(f"{order}{strips}H", *[at] * strips)
    entries = [
        (256, 3, 1, 1),  # width
        (257, 3, 1, 2),  # length
        (258, 3, 1, 8),  # bits per sample
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # black is zero
        (273, 3, strips, at + 2),  # strip offsets
        (277, 3, 1, 1),  # samples per pixel
        (278, 3, 1, 1),  # rows per strip
        (279, 3, 1, 1),  # strip byte counts
    ]
    return tiff(entries, b"\x80\0" + offsets, order)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_tiff_listing_more_strips_than_its_rows_is_refused(order: str) -> None:
    with pytest.raises(UnprocessableInput, match="listing 32768 strips"):
        decode_image(strip_bomb(32_768, order), (32, 32), MAX_PIXELS, "file")
    decode_image(strip_bomb(2, order), (32, 32), MAX_PIXELS, "file")  # its two rows: served


def test_a_tiff_of_too_many_tags_is_refused() -> None:
    entries = [(256, 3, 1, 1), (257, 3, 1, 1)] + [(40_000, 3, 1, 0)] * MAX_TIFF_ENTRIES
    with pytest.raises(UnprocessableInput, match="more than 1000 tags"):
        decode_image(tiff(entries), (32, 32), MAX_PIXELS, "file")


def gradient(width: int, height: int) -> Image.Image:
    row = np.linspace(0, 255, width, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(row, (height, 1))] * 3, axis=-1))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"compression": "tiff_lzw"},
        {"tiffinfo": {278: 1}},  # a strip a row: 400 strips
        {"big_tiff": True, "tiffinfo": {278: 1}},
        {"save_all": True, "append_images": [gradient(600, 400)]},  # two pages
    ],
)
def test_tiffs_as_pillow_writes_them_are_served(options: dict[str, Any]) -> None:
    data = encode(gradient(600, 400), "TIFF", **options)
    assert decode_image(data, (32, 32), MAX_PIXELS, "file").shape == (32, 32, 3)


def test_a_jpegs_segments_are_counted_before_pillow_walks_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16 MB of empty APP1 segments cost Pillow's open 5 s and 460 MB before the count
    refused them: now the count comes first, and Pillow never sees the file."""
    plain = encode(gradient(8, 8), "JPEG")
    data = plain[:2] + b"\xff\xe1\x00\x02" * (MAX_JPEG_SEGMENTS + 1) + plain[2:]

    def never(*_: object, **__: object) -> None:
        raise AssertionError("Pillow opened a file refused by its header")

    monkeypatch.setattr(images.Image, "open", never)
    with pytest.raises(UnprocessableInput, match="segments"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_not_documented_are_refused(fmt: str) -> None:
    """Pillow would try every plugin it has; some walk their headers in Python unbounded."""
    data = encode(gradient(16, 16), fmt)
    with pytest.raises(UnprocessableInput, match="not an image of a format served"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")
