"""What an image file's structure may cost, read before Pillow opens it: a PNG's chunks, a
JPEG's segments and scans, a TIFF's strips. Pillow walks a PNG's chunks and a JPEG's segments in
Python and inflates a PNG's text and ICC profiles as it opens it, makes a Python object of each
strip a TIFF lists (however few its rows), and libjpeg walks the whole image once per scan; none
sets a limit of its own."""

from __future__ import annotations

import re
import struct

from service.core.errors import UnprocessableInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# A PNG's chunks: an ICC profile may come once (the PNG spec), ancillary chunks at most as
# libpng's own default cache allows (an animation's frame chunks aside), and the total bounds the
# walk (a 64 MiB file holds 8,192 chunks of libpng's 8 kB IDAT, or 5.6 million empty ones).
MAX_PNG_CHUNKS = 65_536
MAX_PNG_ANCILLARY_CHUNKS = 1_000
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
FRAME_CHUNKS = frozenset({b"fcTL", b"fdAT"})  # an animated PNG's, a pair a frame
# The one text Pillow reads an image from: EXIF (its orientation) as ImageMagick writes it.
EXIF_KEYWORD = b"Raw profile type exif\0"
# A progressive JPEG's decoder walks every 8x8 block of the full-size image once per scan, at any
# draft scale: 3,000 repeated 16-byte scans (48 kB) took 5 s. Encoders write about 10
# (libjpeg-turbo's djpeg suggests -maxscans 100 for untrusted files).
MAX_JPEG_SCANS = 100
MAX_JPEG_SEGMENTS = 10_000  # markers walked before the scans are counted (a real file: tens)
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker, not stuffing or a restart
# A TIFF's first directory: its entries (a real file: tens), and its strips or tiles, at most as
# many as its rows (or tile grid) need and one a STRIP_PIXELS pixels past MIN_STRIPS: 500,000
# offsets of one 2-pixel strip (1 MB) cost Pillow 2.3 s and 120 MB as it opened the file.
TIFF_HEADS = {b"II*\0": ("<", False), b"MM\0*": (">", False)}
TIFF_HEADS |= {b"II+\0": ("<", True), b"MM\0+": (">", True)}  # BigTIFF
MAX_TIFF_ENTRIES = 1_000
MIN_STRIPS, STRIP_PIXELS = 1_024, 256
_WIDTH, _LENGTH, _SAMPLES, _ROWS, _PLANAR, _TILE_W, _TILE_L = 256, 257, 277, 278, 284, 322, 323
_PIECES = {273: "strip", 279: "strip", 324: "tile", 325: "tile"}  # offsets and byte counts
_VALUE_FORMAT = {3: "H", 4: "L", 16: "Q"}  # SHORT, LONG, LONG8: the sizes a count may have


def png_without_text(data: bytes, where: str) -> bytes:
    """``data`` without its text chunks (but one EXIF profile), which nothing here reads and
    Pillow inflates while it opens the file (1,000:1: 48 one-pixel files of 64 kB took 3 GB);
    422 past the chunk limits above."""
    offset, chunks, ancillary, profiles = len(PNG_SIGNATURE), 0, 0, 0
    dropped: list[tuple[int, int]] = []
    exif_kept = False
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        if kind == b"IEND":
            break
        chunks += 1
        ancillary += kind[0] >> 5 & 1 and kind not in FRAME_CHUNKS  # a lower-case first letter
        profiles += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS or profiles > 1:
            what = "more than one ICC profile" if profiles > 1 else "too many chunks"
            raise UnprocessableInput(
                f"{where}: a PNG of {what} (at most one profile, {MAX_PNG_CHUNKS} chunks, "
                f"{MAX_PNG_ANCILLARY_CHUNKS} of them ancillary)"
            )
        if kind in TEXT_CHUNKS:
            exif = data.startswith(EXIF_KEYWORD, offset + 8)
            if exif and not exif_kept:
                exif_kept = True
            else:
                dropped.append((offset, end))
        offset = end
    if not dropped:
        return data
    kept, start = [], 0
    for begin, end in dropped:
        kept.append(data[start:begin])
        start = end
    kept.append(data[start:])
    return b"".join(kept)


def jpeg_scans(data: bytes, where: str) -> int:
    """The scans of a JPEG's first image, counted along its markers (segments skipped by their
    lengths, entropy-coded data searched past): an EXIF thumbnail's, an MPO's later images' or a
    motion photo's trailing video's bytes are not counted. 422 past ``MAX_JPEG_SCANS``."""
    position, scans, segments = 2, 0, 0
    while position + 4 <= len(data) and scans <= MAX_JPEG_SCANS:
        segments += 1
        if data[position] != 0xFF or segments > MAX_JPEG_SEGMENTS:
            break  # not a marker (Pillow judges the file), or a flood of them
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0xD9:  # the end of the image
            break
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
            if marker == 0xDA:
                scans += 1
                found = _ENTROPY_END.search(data, position)
                if found is None:
                    break
                position = found.start()
    if scans > MAX_JPEG_SCANS:
        raise UnprocessableInput(f"{where}: a JPEG of more than {MAX_JPEG_SCANS} scans")
    if segments > MAX_JPEG_SEGMENTS:
        raise UnprocessableInput(f"{where}: a JPEG of more than {MAX_JPEG_SEGMENTS} segments")
    return scans


def tiff_checked(data: bytes, where: str) -> None:
    """A TIFF's first directory (the image decoded) read for its size and its strips or tiles;
    422 when it has more entries than MAX_TIFF_ENTRIES or more pieces than its rows, tile grid
    and pixels allow (see above). Anything malformed is left to Pillow to judge."""
    order, big = TIFF_HEADS[data[:4]]
    entry, count = (20, "Q") if big else (12, "H")
    try:
        (at,) = struct.unpack_from(order + ("Q" if big else "L"), data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + count, data, at)
    except struct.error:
        return
    if entries > MAX_TIFF_ENTRIES:
        raise UnprocessableInput(f"{where}: a TIFF directory of more than {MAX_TIFF_ENTRIES} tags")
    values: dict[int, int] = {}
    pieces: dict[str, int] = {}
    first = at + struct.calcsize(count)
    for start in range(first, min(first + entries * entry, len(data) - entry + 1), entry):
        tag, kind = struct.unpack_from(order + "HH", data, start)
        (many,) = struct.unpack_from(order + ("Q" if big else "L"), data, start + 4)
        value_at = start + (12 if big else 8)
        if tag in _PIECES:
            pieces[_PIECES[tag]] = max(pieces.get(_PIECES[tag], 0), many)
        elif many == 1 and kind in _VALUE_FORMAT and (big or kind != 16):
            (values[tag],) = struct.unpack_from(order + _VALUE_FORMAT[kind], data, value_at)
    _check_pieces(values, pieces, where)


def _check_pieces(values: dict[int, int], pieces: dict[str, int], where: str) -> None:
    width, length = values.get(_WIDTH, 0), values.get(_LENGTH, 0)
    if not width or not length:
        return  # Pillow refuses it
    planes = values.get(_SAMPLES, 1) if values.get(_PLANAR, 1) == 2 else 1
    rows = max(1, min(values.get(_ROWS, length), length))
    needed = {"strip": -(-length // rows) * planes}
    tile_w, tile_l = values.get(_TILE_W, 0), values.get(_TILE_L, 0)
    if tile_w and tile_l:
        needed["tile"] = -(-width // tile_w) * -(-length // tile_l) * planes
    most = max(MIN_STRIPS, width * length // STRIP_PIXELS)
    for kind, count in pieces.items():
        if count > min(needed.get(kind, 0), most):
            raise UnprocessableInput(
                f"{where}: a TIFF of {width}x{length} pixels listing {count} {kind}s, more "
                f"than its size needs or allows ({min(needed.get(kind, 0), most)})"
            )
