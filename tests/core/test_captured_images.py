"""Captured images are stored compressed and read back as pixels, raw rows of before too."""

from __future__ import annotations

import zlib

import numpy as np

from service.core.captured_images import pack, unpack


def test_pixels_come_back_from_a_compressed_row_and_from_a_raw_one() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, 3072, dtype=np.uint8).tobytes()
    assert unpack(pack(pixels), 3072) == pixels
    assert unpack(pixels, 3072) == pixels  # a row written before compression
    flat = bytes(3072)
    assert len(pack(flat)) < 40 and unpack(pack(flat), 3072) == flat


def test_a_row_that_holds_no_image_of_that_size_is_none() -> None:
    assert unpack(pack(bytes(100)), 3072) is None
    assert unpack(zlib.compress(bytes(10**7)), 3072) is None  # never inflated past 3,073 bytes
    assert unpack(b"garbage", 3072) is None
    assert unpack(pack(bytes(3072))[:-3], 3072) is None  # cut short
