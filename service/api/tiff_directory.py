"""A TIFF's first directory (the image decoded) read before Pillow opens it: its size and its
strips or tiles. Pillow makes a Python object of every strip or tile a TIFF lists as it opens it
(``TiffImageFile._setup``), however few rows the image has, then sorts and decodes them all: a
1x2 TIFF listing 524,288 strips (1 MB) cost 2.34 s and 120 MB, and the pixel limit saw 2 pixels.
So a TIFF may list no more pieces than its rows or tile grid need, nor more than one a
``MIN_PIECE_PIXELS`` pixels (past ``FEW_PIECES``), and each piece is charged ``PIECE_PIXELS``
pixels besides its size: Pillow's work for one (14-28 us: its decoder made, its bytes sought
and read) costs what decoding a few thousand pixels does.

Each tag is read as Pillow reads it: its first entry wins, any integer type, inline or at its
offset; a size that cannot be read so is refused here, not left to Pillow, which would make the
pieces first."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from service.core.errors import UnprocessableInput

TIFF_HEADS = {b"II*\0": ("<", False), b"MM\0*": (">", False)}
TIFF_HEADS |= {b"II+\0": ("<", True), b"MM\0+": (">", True)}  # BigTIFF
MAX_TIFF_ENTRIES = 1_000  # a directory's tags (a real file: tens); Pillow walks each in Python
PIECE_PIXELS = 4_096  # what a strip or tile is charged besides the image's pixels
MIN_PIECE_PIXELS, FEW_PIECES = 64, 64  # a strip a row of a 640-wide image: 640 a piece
_WIDTH, _LENGTH, _SAMPLES, _ROWS, _PLANAR, _TILE_W, _TILE_L = 256, 257, 277, 278, 284, 322, 323
_SIZES = (_WIDTH, _LENGTH, _SAMPLES, _ROWS, _PLANAR, _TILE_W, _TILE_L)
_PIECES = {273: "strip", 279: "strip", 324: "tile", 325: "tile"}  # offsets and byte counts
# The integer types: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8, SLONG8, IFD, IFD8
_INTEGERS = {1: "B", 3: "H", 4: "L", 6: "b", 8: "h", 9: "l", 16: "Q", 17: "q", 13: "L", 18: "Q"}


@dataclass(frozen=True)
class _Layout:
    order: str  # "<" or ">"
    big: bool  # BigTIFF: 8-byte counts and offsets, 20-byte entries

    @property
    def offset(self) -> str:
        return self.order + ("Q" if self.big else "L")


def tiff_pieces(data: bytes, max_pixels: int, where: str) -> int:
    """The strips or tiles a TIFF's first directory lists, checked: a 422 when it has more than
    MAX_TIFF_ENTRIES tags, a size that cannot be read, more pixels than ``max_pixels``, or more
    pieces than its rows (by RowsPerStrip) or tile grid need. A directory that cannot be found
    is Pillow's to refuse (it makes no pieces then)."""
    layout = _Layout(*TIFF_HEADS[data[:4]])
    try:
        (at,) = struct.unpack_from(layout.offset, data, 8 if layout.big else 4)
        (entries,) = struct.unpack_from(layout.order + ("Q" if layout.big else "H"), data, at)
    except struct.error:
        return 0
    if entries > MAX_TIFF_ENTRIES:
        raise UnprocessableInput(f"{where}: a TIFF directory of more than {MAX_TIFF_ENTRIES} tags")
    values, pieces = _read(data, layout, at + (8 if layout.big else 2), entries)
    width, length = values.get(_WIDTH, 0), values.get(_LENGTH, 0)
    if width <= 0 or length <= 0:
        raise UnprocessableInput(f"{where}: a TIFF whose size cannot be read")
    if width * length > max_pixels:
        raise UnprocessableInput(
            f"{where}: {width}x{length} pixels, more than the limit of {max_pixels}"
        )
    planes = max(1, values.get(_SAMPLES, 1)) if values.get(_PLANAR, 1) == 2 else 1
    rows = max(1, min(values.get(_ROWS, length), length))
    needed = {"strip": -(-length // rows) * planes}
    tile_w, tile_l = values.get(_TILE_W, 0), values.get(_TILE_L, 0)
    tiles = -(-width // tile_w) * -(-length // tile_l) if tile_w > 0 and tile_l > 0 else 0
    needed["tile"] = tiles * planes
    most = max(FEW_PIECES, width * length // MIN_PIECE_PIXELS)
    needed = {kind: min(count, most) for kind, count in needed.items()}
    for kind, count in pieces.items():
        if count > needed[kind]:
            raise UnprocessableInput(
                f"{where}: a TIFF of {width}x{length} pixels listing {count} {kind}s, more "
                f"than its size needs or allows ({needed[kind]})"
            )
    return max(pieces.values(), default=0)


def _read(
    data: bytes, layout: _Layout, first: int, entries: int
) -> tuple[dict[int, int], dict[str, int]]:
    """The size tags' first values and the pieces' counts, each tag's first entry only."""
    entry = 20 if layout.big else 12
    seen: set[int] = set()
    values: dict[int, int] = {}
    pieces: dict[str, int] = {}
    for start in range(first, min(first + entries * entry, len(data) - entry + 1), entry):
        tag, kind = struct.unpack_from(layout.order + "HH", data, start)
        if tag in seen:
            continue
        seen.add(tag)
        (count,) = struct.unpack_from(layout.offset, data, start + 4)
        if tag in _PIECES:
            pieces[_PIECES[tag]] = max(pieces.get(_PIECES[tag], 0), count)
        elif tag in _SIZES and kind in _INTEGERS and count >= 1:
            value = _first_value(data, layout, start + (12 if layout.big else 8), kind, count)
            if value is not None:
                values[tag] = value
    return values, pieces


def _first_value(data: bytes, layout: _Layout, field: int, kind: int, count: int) -> int | None:
    """An entry's first value: in its value field when all its values fit there, else at the
    offset the field holds; None past the end of the data."""
    code = layout.order + _INTEGERS[kind]
    try:
        if struct.calcsize(code) * count <= (8 if layout.big else 4):
            (value,) = struct.unpack_from(code, data, field)
        else:
            (at,) = struct.unpack_from(layout.offset, data, field)
            (value,) = struct.unpack_from(code, data, at)
    except struct.error:
        return None
    return int(value)
