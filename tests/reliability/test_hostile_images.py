"""Uploaded image files of every awkward kind: each is classified or refused with a 4xx and a
message, never a 5xx, and nothing is decoded past the pixel limit."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.anyio

CLASSIFY = "/v1/models/cifar10_cnn:classify?top_k=10"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """Left half red, right half blue over a vertical ramp: a picture with an orientation."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    pixels[:, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels)


def noise(width: int, height: int) -> Image.Image:
    """Random pixels: files that do not compress, so half of one is really missing data."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 30), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def multi_page_tiff() -> bytes:
    buffer = io.BytesIO()
    pages = [gradient(33, 17), gradient(8, 8)]
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = gradient(20, 20).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(image, "PNG", transparency=0)


CLASSIFIED: dict[str, Callable[[], bytes]] = {
    "rgb-png": lambda: encode(gradient(64, 48), "PNG"),
    "cmyk-jpeg": lambda: encode(gradient(40, 40).convert("CMYK"), "JPEG"),
    "16-bit-png": lambda: encode(
        Image.fromarray(np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)), "PNG"
    ),
    "rgba-png": lambda: encode(gradient(30, 30).convert("RGBA"), "PNG"),
    "la-png": lambda: encode(gradient(30, 30).convert("LA"), "PNG"),
    "palette-transparent-png": palette_with_transparency,
    "1-bit-png": lambda: encode(gradient(30, 30).convert("1"), "PNG"),
    "grayscale-jpeg": lambda: encode(gradient(30, 30).convert("L"), "JPEG"),
    "animated-gif": animated_gif,
    "multi-page-tiff": multi_page_tiff,
    "webp": lambda: encode(gradient(30, 30), "WEBP"),
    "bmp": lambda: encode(gradient(30, 30), "BMP"),
    "1x2000": lambda: encode(gradient(1, 2000), "PNG"),
    "2000x1": lambda: encode(gradient(2000, 1), "PNG"),
    "1x1": lambda: encode(gradient(1, 1), "PNG"),
}

REFUSED: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "not-an-image": lambda: b"this is plain text, not a picture\n" * 10,
    "truncated-png": lambda: half(encode(noise(64, 64), "PNG")),
    "truncated-jpeg": lambda: half(encode(noise(64, 64), "JPEG")),
    "png-header-only": lambda: encode(noise(64, 64), "PNG")[:33],
    "bomb-100000x100000": lambda: png_claiming(100_000, 100_000),
    "bomb-over-the-limit": lambda: png_claiming(4_000_001, 1),
    "zero-height": lambda: png_claiming(10, 0),
    "garbage-after-magic": lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
}


@pytest.mark.parametrize("make", CLASSIFIED.values(), ids=CLASSIFIED.keys())
async def test_unusual_but_valid_images_are_classified(
    client: httpx.AsyncClient, make: Callable[[], bytes]
) -> None:
    response = await client.post(CLASSIFY, files={"file": ("image", make())})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert len(prediction) == 10
    assert sum(p["probability"] for p in prediction) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
async def test_broken_and_hostile_files_are_a_422_with_a_message(
    client: httpx.AsyncClient, make: Callable[[], bytes]
) -> None:
    response = await client.post(CLASSIFY, files={"file": ("image", make())})
    assert response.status_code == 422, response.text
    assert "image" in response.json()["error"]


async def test_a_bomb_is_refused_by_its_header_not_decoded(client: httpx.AsyncClient) -> None:
    response = await client.post(CLASSIFY, files={"file": ("b", png_claiming(100_000, 100_000))})
    assert response.status_code == 422
    assert "than the limit of 4000000" in response.json()["error"]


async def test_b64_instances_meet_the_same_checks(client: httpx.AsyncClient) -> None:
    bomb = base64.b64encode(png_claiming(100_000, 100_000)).decode()
    response = await client.post(
        "/v1/models/cifar10_cnn:predict", json={"instances": [{"b64": bomb}]}
    )
    assert response.status_code == 422
    assert "instance 0" in response.json()["error"] and "limit" in response.json()["error"]
    bad = await client.post(
        "/v1/models/cifar10_cnn:predict", json={"instances": [{"b64": "not base64!"}]}
    )
    assert bad.status_code == 422 and "base64" in bad.json()["error"]


async def test_exif_orientation_is_applied_before_classifying(client: httpx.AsyncClient) -> None:
    """A photo stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view") is
    classified as the upright picture, which differs from the stored pixels."""
    upright = gradient(48, 64)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = encode(stored, "PNG", exif=exif)

    async def probabilities(data: bytes) -> list[float]:
        response = await client.post(CLASSIFY, files={"file": ("image", data)})
        assert response.status_code == 200, response.text
        row = sorted(response.json()["predictions"][0], key=lambda p: p["index"])
        return [p["probability"] for p in row]

    turned = await probabilities(with_exif)
    assert turned == pytest.approx(await probabilities(encode(upright, "PNG")), abs=1e-5)
    assert turned != pytest.approx(await probabilities(encode(stored, "PNG")), abs=1e-5)
