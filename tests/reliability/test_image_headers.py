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
from PIL import Image, ImageOps

from service.api import images
from service.api.image_files import MAX_GIF_BLOCKS, MAX_JPEG_EXIF_SEGMENTS, MAX_JPEG_SEGMENTS
from service.api.images import ImageLimits, decode_image, decode_images
from service.api.tiff_directory import MAX_TIFF_ENTRIES, PIECE_PIXELS
from service.core.errors import UnprocessableInput

MAX_PIXELS = 16_000_000


FIELD = {3: "H", 8: "h", 4: "L", 9: "l"}  # SHORT, SSHORT, LONG, SLONG: a value in the field
SIZE = {3: 2, 8: 2, 4: 4, 9: 4}  # more than fit in the field: an offset (LONG) to them


def tiff(entries: list[tuple[int, int, int, int]], tail: bytes = b"", order: str = "<") -> bytes:
    """A classic TIFF of one directory of (tag, type, count, value) entries, then ``tail``."""
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    packed = b"".join(
        struct.pack(order + "HHL", tag, kind, count)
        + struct.pack(order + (FIELD[kind] if count * SIZE[kind] <= 4 else "L"), value).ljust(
            4, b"\0"
        )
        for tag, kind, count, value in entries
    )
    return head + struct.pack(order + "H", len(entries)) + packed + b"\0\0\0\0" + tail


def strip_bomb(
    strips: int, order: str = "<", size: list[tuple[int, int, int, int]] | None = None
) -> bytes:
    """A 1x2 gray uncompressed TIFF whose StripOffsets (SHORT) list one offset ``strips`` times:
    Pillow made an object of each, 500,000 of them (1 MB) in 2.3 s and 120 MB. ``size``: its
    width and length entries, put first (Pillow reads a tag's first entry)."""
    size = size or [(256, 3, 1, 1), (257, 3, 1, 2)]
    at = 8 + 2 + 12 * (7 + len(size)) + 4
    offsets = struct.pack(f"{order}{strips}H", *[at] * strips)
    entries = [
        *size,
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
    with pytest.raises(UnprocessableInput, match="not a decodable image of a format served"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


@pytest.mark.parametrize(
    "size",
    [
        [(256, 3, 1, 1), (257, 3, 1, 2), (256, 4, 1, 300_000), (257, 4, 1, 300_000)],  # repeated
        [(256, 8, 1, 1), (257, 8, 1, 2)],  # SSHORT
        [(256, 9, 1, 1), (257, 9, 1, 2)],  # SLONG
        [(256, 3, 1, 0), (257, 3, 1, 2)],  # no width
        [(256, 4, 1, 1_000_000), (257, 4, 1, 1_000_000)],  # past the pixel limit
    ],
    ids=["repeated tags", "SSHORT", "SLONG", "width 0", "too large"],
)
def test_the_size_is_read_as_pillow_reads_it_and_checked_first(
    size: list[tuple[int, int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way past the first check (a helper's review) let Pillow make the 250,000 strips."""
    data = strip_bomb(250_000, size=size)

    def never(*_: object, **__: object) -> None:
        raise AssertionError("Pillow opened a file refused by its header")

    monkeypatch.setattr(images.Image, "open", never)
    with pytest.raises(UnprocessableInput, match=r"strips|size cannot be read|more than the limit"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


def test_a_tiffs_strips_are_charged_to_the_request() -> None:
    """One strip a row of a 1x1,000 image is what its size needs, but Pillow's work for each
    costs what thousands of pixels do: charged PIECE_PIXELS, the request's budget sees it."""
    data = strip_bomb(2)  # two strips, two rows
    decode_images([(data, "file")], (32, 32), ImageLimits(MAX_PIXELS, 2 + 2 * PIECE_PIXELS))
    with pytest.raises(images.PayloadTooLarge):
        decode_images([(data, "file")], (32, 32), ImageLimits(MAX_PIXELS, 1 + 2 * PIECE_PIXELS))


def planar_tiles(width: int, length: int, tile: int, order: str = "<") -> bytes:
    """A planar (one plane a colour), tiled RGB TIFF of zeros, uncompressed, as libtiff writes
    one (Pillow writes neither)."""
    across, down = -(-width // tile), -(-length // tile)
    pieces = across * down * 3
    base = 8 + 2 + 12 * 12 + 4  # past the directory: bits per sample, offsets, counts, a tile
    pixels = base + 6 + 8 * pieces  # every tile the same tile of zeros
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, length),
        (258, 3, 3, base),  # 8 bits a sample, at ``base``
        (259, 3, 1, 1),
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),
        (284, 3, 1, 2),  # planar
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, pieces, base + 6),
        (325, 4, pieces, base + 6 + 4 * pieces),
        (339, 3, 1, 1),  # unsigned samples
    ]
    tail = struct.pack(order + "HHH", 8, 8, 8)
    tail += struct.pack(f"{order}{pieces}L", *[pixels] * pieces)
    tail += struct.pack(f"{order}{pieces}L", *[tile * tile] * pieces)
    return tiff(entries, tail + bytes(tile * tile), order)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("width,tile", [(512, 16), (520, 16), (1024, 64)])
def test_planar_tiled_tiffs_are_served(order: str, width: int, tile: int) -> None:
    """Partial tiles and planes: what a helper's review found the first check refused."""
    data = planar_tiles(width, width, tile, order)
    assert decode_image(data, (32, 32), MAX_PIXELS, "file").shape == (32, 32, 3)


def jpeg_with_exif_segments(count: int) -> bytes:
    plain = encode(gradient(8, 8), "JPEG")
    segment = b"\xff\xe1" + struct.pack(">H", 2 + 6 + 8) + b"Exif\0\0" + b"II*\0\x08\0\0\0"
    return plain[:2] + segment * count + plain[2:]


def test_a_jpeg_of_many_exif_segments_is_refused() -> None:
    """Pillow appends each EXIF segment to those before, a quadratic copy: 9,000 of 1.8 kB
    (16 MB) took 27 s."""
    decode_image(jpeg_with_exif_segments(1), (32, 32), MAX_PIXELS, "file")
    with pytest.raises(UnprocessableInput, match="EXIF segments"):
        data = jpeg_with_exif_segments(MAX_JPEG_EXIF_SEGMENTS + 1)
        decode_image(data, (32, 32), MAX_PIXELS, "file")


def gif_with_comment(blocks: int) -> bytes:
    plain = encode(Image.new("P", (1, 1)), "GIF")
    at = plain.index(b",")  # the image descriptor
    return plain[:at] + b"!\xfe" + b"\x02ab" * blocks + b"\0" + plain[at:]


def test_a_gif_of_many_blocks_before_its_image_is_refused() -> None:
    """8 MB of 2-byte comment blocks cost Pillow 0.9 s and 340 MB."""
    decode_image(gif_with_comment(1_000), (32, 32), MAX_PIXELS, "file")
    with pytest.raises(UnprocessableInput, match="blocks before its image"):
        decode_image(gif_with_comment(MAX_GIF_BLOCKS), (32, 32), MAX_PIXELS, "file")


def test_an_exif_orientation_still_turns_the_image() -> None:
    """Turned by the orientation alone: ImageOps also wrote the EXIF back (1 ms a kB of it)."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    upright = decode_image(encode(Image.fromarray(pixels), "PNG"), (32, 32), MAX_PIXELS, "f")
    turned = decode_image(
        encode(Image.fromarray(pixels), "PNG", exif=exif), (32, 32), MAX_PIXELS, "f"
    )
    assert upright[:, :8].mean() > 200 > 50 > turned[:, :8].mean()


def test_a_strip_a_row_of_a_narrow_image_is_refused() -> None:
    """What its rows need, but Pillow's work for each strip (14-28 us) is the cost of thousands
    of pixels: a 1x1,024 image in 1,024 strips (4 kB) took 29 ms."""
    size = [(256, 3, 1, 1), (257, 3, 1, 1_024)]
    with pytest.raises(UnprocessableInput, match=r"listing 1024 strips, more than .* \(64\)"):
        decode_image(strip_bomb(1_024, size=size), (32, 32), MAX_PIXELS, "file")


def test_junk_hides_no_segment_or_block_from_the_count() -> None:
    """Pillow skips bytes that are neither markers nor blocks one at a time; the counts stopped
    at the first (a second review: 8 MB of EXIF segments after one junk byte took 5.5 s)."""
    jpeg = jpeg_with_exif_segments(MAX_JPEG_EXIF_SEGMENTS + 1)
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")  # SOI, APP0's marker and length
    with pytest.raises(UnprocessableInput, match="EXIF segments"):
        decode_image(jpeg[:app0_end] + b"\0" + jpeg[app0_end:], (32, 32), MAX_PIXELS, "file")
    gif = gif_with_comment(MAX_GIF_BLOCKS)
    at = gif.index(b"!\xfe")
    with pytest.raises(UnprocessableInput, match="blocks before its image"):
        decode_image(gif[:at] + b"\0" + gif[at:], (32, 32), MAX_PIXELS, "file")
    with pytest.raises(UnprocessableInput, match="junk"):
        decode_image(gif[:at] + b"\0" * 5_000 + gif[at:], (32, 32), MAX_PIXELS, "file")


@pytest.mark.parametrize("head", [b"II\0*", b"MM*\0"])
def test_every_tiff_header_pillow_takes_is_checked(head: bytes) -> None:
    """Pillow takes six headers for a TIFF, two of them odd; a check of four let the bomb in."""
    data = head + strip_bomb(32_768, "<" if head[:2] == b"II" else ">")[4:]
    with pytest.raises(UnprocessableInput, match="listing 32768 strips"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


def test_entries_pillow_skips_do_not_hide_the_ones_it_keeps() -> None:
    """Pillow keeps the first entry of a tag it can read; an empty one before it is skipped."""
    bomb = strip_bomb(250_000)
    empty = tiff([(273, 3, 0, 0)])[10:22]  # a StripOffsets entry of no values
    count = struct.unpack_from("<H", bomb, 8)[0]
    first = 10 + 12 * 5  # where StripOffsets lies: after the 5 entries before it
    data = bomb[:8] + struct.pack("<H", count + 1) + bomb[10:first] + empty + bomb[first:]
    at = 8 + 2 + 12 * (count + 1) + 4  # every offset past the directory moves by 12
    data = data[: first + 12 + 8] + struct.pack("<L", at + 2) + data[first + 12 + 12 :]
    with pytest.raises(UnprocessableInput, match="listing 250000 strips"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


def test_a_directory_offset_past_any_file_is_pillows_to_refuse() -> None:
    """An offset past 2**63 made the check's read overflow (a 500)."""
    data = b"II+\0\x08\0\0\0" + struct.pack("<Q", 2**64 - 1)
    with pytest.raises(UnprocessableInput, match="undecodable image"):
        decode_image(data, (32, 32), MAX_PIXELS, "file")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_turns_the_image_as_imageops_does(orientation: int) -> None:
    pixels = np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(pixels), "PNG", exif=exif)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    wanted = np.asarray(expected.resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(decode_image(data, (32, 32), MAX_PIXELS, "file"), wanted)


def test_strips_past_the_requests_budget_are_refused_before_pillow_makes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1x16M image a strip a row lists 250,000 strips its size allows; charged, they are
    over the request's budget, which was said only after Pillow made them (0.64 s)."""
    size = [(256, 3, 1, 1), (257, 4, 1, 16_000_000)]

    def never(*_: object, **__: object) -> None:
        raise AssertionError("Pillow opened a file refused by its header")

    monkeypatch.setattr(images.Image, "open", never)
    with pytest.raises(images.PayloadTooLarge, match="per request"):
        decode_images(
            [(strip_bomb(250_000, size=size), "file")],
            (32, 32),
            ImageLimits(MAX_PIXELS, 64_000_000),
        )
