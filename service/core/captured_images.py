"""Captured images as the prediction log stores them: their pixels zlib-compressed. Stored raw,
one-pixel PNGs of 69 bytes became 3,072 bytes each, and a client sending them grew the log 40
times faster than it sent (a helper's audit); compressed, such an image is a few dozen bytes,
and a real one about its PNG's size. Rows written before are raw, and read as they are."""

from __future__ import annotations

import zlib

LEVEL = 1  # the fastest: about 20 us an image on the log's writer thread


def pack(pixels: bytes) -> bytes:
    """An image's pixels as the log stores them."""
    return zlib.compress(pixels, LEVEL)


def unpack(stored: bytes, size: int) -> bytes | None:
    """The pixels of a stored image of ``size`` bytes: decompressed (never past ``size`` plus
    one byte, so a corrupt row cannot grow), or the row itself where it was stored raw; None
    when it holds neither."""
    try:
        inflate = zlib.decompressobj()
        pixels = inflate.decompress(stored, size + 1)
    except zlib.error:
        return stored if len(stored) == size else None
    if len(pixels) != size or inflate.unconsumed_tail or not inflate.eof:
        return None
    return pixels
