"""What an image file's structure may cost, read before Pillow opens it: a PNG's chunks, a
JPEG's segments and scans, a GIF's blocks (a TIFF's directory: ``tiff_directory``). Pillow walks
them in Python as it opens a file, inflates a PNG's text and ICC profiles, joins a JPEG's EXIF
segments one by one and a GIF's comment blocks, and libjpeg walks the whole image once per scan;
none sets a limit of its own."""

from __future__ import annotations

import re
import struct

from service.core.errors import UnprocessableInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
GIF_STARTS = (b"GIF87a", b"GIF89a")
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
# Pillow appends each EXIF segment to the ones before, a quadratic copy: 9,000 of 1.8 kB (16 MB)
# took 27 s. A camera writes one (the EXIF spec allows no more; XMP's APP1 is not EXIF).
MAX_JPEG_EXIF_SEGMENTS = 4
# A GIF's extension sub-blocks before its first image (a comment's, an application's): Pillow
# keeps each as an object before joining them, 8 MB of 2-byte ones 0.9 s and 340 MB.
MAX_GIF_BLOCKS = 16_384
# Bytes between a JPEG's markers or a GIF's blocks that are neither: Pillow skips them a byte at a
# time in Python (a real file: none, or a few of padding), and they hid the rest from the count.
MAX_JUNK_BYTES = 4_096
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker, not stuffing or a restart
_JPEG_MARKER = re.compile(rb"\xff")
_GIF_BLOCK = re.compile(rb"[!,;]")  # an extension, an image, the end


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
    position, scans, segments, exif, junk = 2, 0, 0, 0, 0
    while position + 4 <= len(data) and scans <= MAX_JPEG_SCANS:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            break  # a flood of markers
        if data[position] != 0xFF:  # junk, which Pillow skips a byte at a time
            position, junk = _past_junk(data, position, _JPEG_MARKER, junk, where)
            continue
        marker = data[position + 1]
        exif += marker == 0xE1 and data.startswith(b"Exif\0\0", position + 4)
        if exif > MAX_JPEG_EXIF_SEGMENTS:
            raise UnprocessableInput(
                f"{where}: a JPEG of more than {MAX_JPEG_EXIF_SEGMENTS} EXIF segments"
            )
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


def gif_checked(data: bytes, where: str) -> None:
    """A GIF's extension sub-blocks before its first image counted (``MAX_GIF_BLOCKS``, a 422
    past it); anything malformed is left to Pillow to judge."""
    if len(data) < 13:
        return
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the colour table
    blocks = junk = 0
    while position < len(data) and data[position] != 0x2C:  # not yet the first image
        if data[position] == 0x3B:  # the end
            return
        if data[position] != 0x21:  # junk, which Pillow skips a byte at a time
            position, junk = _past_junk(data, position, _GIF_BLOCK, junk, where)
            continue
        position += 2  # an extension: its label, then its blocks
        while position < len(data):
            size = data[position]
            position += 1 + size
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise UnprocessableInput(
                    f"{where}: a GIF of more than {MAX_GIF_BLOCKS} blocks before its image"
                )
            if size == 0:
                break


def _past_junk(
    data: bytes, position: int, wanted: re.Pattern[bytes], junk: int, where: str
) -> tuple[int, int]:
    """Where ``wanted`` is next found (the end if nowhere), and the junk bytes counted so far
    with those skipped; a 422 past MAX_JUNK_BYTES."""
    found = wanted.search(data, position)
    end = found.start() if found else len(data)
    junk += end - position
    if junk > MAX_JUNK_BYTES:
        raise UnprocessableInput(f"{where}: more than {MAX_JUNK_BYTES} bytes of junk in the image")
    return end, junk
