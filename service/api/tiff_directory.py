"""A TIFF's first directory (the image decoded) read before Pillow opens it: its size and its
strips or tiles. Pillow makes a Python object of every strip or tile a TIFF lists as it opens it
(``TiffImageFile._setup``), however few rows the image has, then sorts and decodes them all: a
1x2 TIFF listing 524,288 strips (1 MB) cost 2.34 s and 120 MB, and the pixel limit saw 2 pixels.
So a TIFF may list no more pieces than its rows or tile grid need, nor more than one a
``MIN_PIECE_PIXELS`` pixels (past ``FEW_PIECES``), and each piece is charged ``PIECE_PIXELS``
pixels besides its size: Pillow's work for one (14-28 us: its decoder made, its bytes sought
and read) costs what decoding a few thousand pixels does.

The directory is read by Pillow's own ``ImageFileDirectory_v2``, from the header Pillow reads,
so the tags are the ones Pillow keeps (a second review found a check of its own disagreeing with
Pillow's rules in six ways, each bringing the bomb back); only its entries are counted first,
as Pillow walks each in Python."""

from __future__ import annotations

import io
import warnings

from PIL.TiffImagePlugin import PREFIXES, ImageFileDirectory_v2

from service.core.errors import PayloadTooLarge, UnprocessableInput

MAX_TIFF_ENTRIES = 1_000  # a directory's tags (a real file: tens); Pillow walks each in Python
PIECE_PIXELS = 4_096  # what a strip or tile is charged besides the image's pixels
MIN_PIECE_PIXELS, FEW_PIECES = 64, 64  # a strip a row of a 640-wide image: 640 a piece
_WIDTH, _LENGTH, _SAMPLES, _ROWS, _PLANAR, _TILE_W, _TILE_L = 256, 257, 277, 278, 284, 322, 323
_PIECES = {273: "strip", 279: "strip", 324: "tile", 325: "tile"}  # offsets and byte counts


def is_tiff(data: bytes) -> bool:
    """Whether Pillow takes ``data`` for a TIFF (any of its six headers)."""
    return data[:4] in PREFIXES


def tiff_pieces(data: bytes, max_pixels: int, max_charged: int, where: str) -> int:
    """The strips or tiles a TIFF's first directory lists, checked: a 422 when it has more than
    MAX_TIFF_ENTRIES tags, a size that cannot be read, more pixels than ``max_pixels``, or more
    pieces than its rows (by RowsPerStrip) or tile grid need; a 413 when its pixels and pieces
    are charged more than ``max_charged`` (the request's budget: said before Pillow makes
    them). A directory that cannot be read is Pillow's to refuse (it makes no pieces then)."""
    directory = _directory(data, where)
    if directory is None:
        return 0
    width, length = directory.get(_WIDTH), directory.get(_LENGTH)
    if not isinstance(width, int) or not isinstance(length, int) or width <= 0 or length <= 0:
        raise UnprocessableInput(f"{where}: a TIFF whose size cannot be read")
    if width * length > max_pixels:
        raise UnprocessableInput(
            f"{where}: {width}x{length} pixels, more than the limit of {max_pixels}"
        )
    planes = max(1, _number(directory, _SAMPLES, 1)) if _number(directory, _PLANAR, 1) == 2 else 1
    rows = max(1, min(_number(directory, _ROWS, length), length))
    tile_w, tile_l = _number(directory, _TILE_W, 0), _number(directory, _TILE_L, 0)
    tiles = -(-width // tile_w) * -(-length // tile_l) if tile_w > 0 and tile_l > 0 else 0
    most = max(FEW_PIECES, width * length // MIN_PIECE_PIXELS)
    needed = {"strip": min(-(-length // rows) * planes, most), "tile": min(tiles * planes, most)}
    counted = 0
    for tag, kind in _PIECES.items():
        listed = directory.get(tag)
        count = len(listed) if isinstance(listed, tuple) else int(listed is not None)
        if count > needed[kind]:
            raise UnprocessableInput(
                f"{where}: a TIFF of {width}x{length} pixels listing {count} {kind}s, more "
                f"than its size needs or allows ({needed[kind]})"
            )
        counted = max(counted, count)
    if width * length + counted * PIECE_PIXELS > max_charged:
        raise PayloadTooLarge(
            f"{where}: a TIFF of {width}x{length} pixels in {counted} pieces, charged "
            f"{width * length + counted * PIECE_PIXELS} pixels, more than the limit of "
            f"{max_charged} per request"
        )
    return counted


def _directory(data: bytes, where: str) -> ImageFileDirectory_v2 | None:
    """The first directory as Pillow's ``TiffImageFile`` reads it, or None where it cannot."""
    big = data[2:3] == b"+"  # BigTIFF (Pillow's test): a 16-byte header, 8-byte entry count
    try:
        directory = ImageFileDirectory_v2(data[:16] if big else data[:8])
    except Exception:  # not a header Pillow reads
        return None
    at, size = directory.next, 8 if big else 2
    if at + size > len(data):
        return None  # Pillow cannot read it either
    entries = int.from_bytes(data[at : at + size], "little" if data[:2] == b"II" else "big")
    if entries > MAX_TIFF_ENTRIES:
        raise UnprocessableInput(f"{where}: a TIFF directory of more than {MAX_TIFF_ENTRIES} tags")
    stream = io.BytesIO(data)
    stream.seek(at)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of each tag it skips
            directory.load(stream)
    except Exception:  # Pillow's own reading failed: so will its open
        return None
    return directory


def _number(directory: ImageFileDirectory_v2, tag: int, default: int) -> int:
    """A tag's value when it is an integer (its first, when it has several), else ``default``."""
    value = directory.get(tag, default)
    if isinstance(value, tuple):
        value = value[0] if value else default
    return value if isinstance(value, int) else default
