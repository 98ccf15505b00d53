"""Image files whose decoding costs far more than their bytes (found by a sixth audit): each is
refused, counted at its cost, or decoded off the event loop, and costs what its size says."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api.image_files import MAX_JPEG_SCANS, MAX_PNG_ANCILLARY_CHUNKS
from service.api.images import (
    INLINE_FILES,
    INLINE_IMAGE_BYTES,
    ImageLimits,
    decode_b64_images,
    decode_image,
    decode_images,
)
from service.core.errors import UnprocessableInput
from service.engine.work_pool import TooHeavyForTheLoop
from tests.support.apps import app_client, make_settings
from tests.support.models import make_model_repo
from tests.support.servers import ROOT

pytestmark = pytest.mark.anyio

CLASSIFY = "/v1/models/cifar10_cnn:classify"
LIMITS = ImageLimits(16_000_000, 64_000_000)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_of_scans(size: tuple[int, int], scans: int, mode: str = "L") -> bytes:
    """A progressive JPEG of ``scans`` scans: Pillow's own (6 scans for grayscale, 10 for
    colour) with its last one, an AC refinement of a few bytes, repeated as a hostile file does."""
    data = encode(Image.new(mode, size, 90), "JPEG", progressive=True)
    last = data[data.rindex(b"\xff\xda") : -2]  # from the last SOS to the EOI marker
    extra = scans - data.count(b"\xff\xda")
    assert extra >= 0
    return data[:-2] + last * extra + b"\xff\xd9"


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(chunks: bytes) -> bytes:
    """A 1x1 PNG with ``chunks`` after IHDR, before IDAT: read while Pillow opens it."""
    plain = encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")
    return plain[:33] + chunks + plain[33:]


def png_with_text(chunks: int, inflated: int) -> bytes:
    """A 1x1 PNG carrying ``chunks`` zTXt chunks, each inflating to ``inflated`` bytes."""
    text = zlib.compress(b"a" * inflated, 9)
    return png_with_chunks(
        b"".join(chunk(b"zTXt", b"note%d\0\0" % i + text) for i in range(chunks))
    )


@pytest.fixture
async def tight(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a request budget of 1,000,000 pixels and room for 32 images."""
    settings = make_settings(
        make_model_repo(tmp_path),
        max_images_per_request=32,
        max_request_pixels=1_000_000,
        poll_interval_s=0,
    )
    async with app_client(settings) as http:
        yield http


async def test_a_jpeg_of_more_scans_than_the_limit_is_a_422_before_it_is_decoded(
    client: httpx.AsyncClient,
) -> None:
    """libjpeg walks every block once per scan and sets no limit: 3,000 repeated 16-byte scans
    (48 kB) held the event loop 5 s. The scans are counted from the file's markers first."""
    at_limit = await client.post(CLASSIFY, files={"f": ("a.jpg", jpeg_of_scans((64, 64), 100))})
    assert at_limit.status_code == 200, at_limit.text
    over = jpeg_of_scans((64, 64), MAX_JPEG_SCANS + 1)
    response = await client.post(CLASSIFY, files={"f": ("a.jpg", over)})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "image 0 (f=a.jpg): a JPEG of more than 100 scans"
    b64 = {"instances": [{"b64": base64.b64encode(over).decode()}]}
    predicted = await client.post("/v1/models/cifar10_cnn:predict", json=b64)
    assert predicted.status_code == 422 and "100 scans" in predicted.json()["error"]


async def test_a_progressive_jpeg_counts_its_full_size_per_ten_scans_in_the_request_budget(
    tight: httpx.AsyncClient,
) -> None:
    """A baseline JPEG counts at its draft scale (1/8 here); a progressive one at full size, once
    per 10 scans: each of its scans walks the full-size image whatever the draft scale."""
    baseline = encode(Image.new("RGB", (1024, 1024), (9, 99, 199)), "JPEG")
    served = await tight.post(CLASSIFY, files={"f": ("b.jpg", baseline)})
    assert served.status_code == 200, served.text  # 128 x 128 at the draft scale

    ten = jpeg_of_scans((700, 700), 10, "RGB")  # 490,000 pixels, once
    served = await tight.post(CLASSIFY, files={"f": ("p.jpg", ten)})
    assert served.status_code == 200, served.text
    thirty = jpeg_of_scans((700, 700), 30, "RGB")  # three times
    refused = await tight.post(CLASSIFY, files={"f": ("p.jpg", thirty)})
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == (
        "the images decode to 1470000 pixels (progressive JPEGs at full size, once per 10 "
        "scans), more than the limit of 1000000 per request"
    )


async def test_a_progressive_jpeg_is_decoded_on_the_pool_where_a_baseline_one_is_not() -> None:
    """On the event loop, a 512 x 512 baseline JPEG decodes at its draft scale (64 x 64) right
    there; a progressive one counts 262,144 pixels, past ``INLINE_PIXELS``: to the work pool."""
    baseline = encode(Image.new("RGB", (512, 512), (9, 99, 199)), "JPEG")
    (row,) = decode_images([(baseline, "b")], (32, 32), LIMITS)
    assert row.shape == (32, 32, 3)
    progressive = encode(Image.new("RGB", (512, 512), (9, 99, 199)), "JPEG", progressive=True)
    with pytest.raises(TooHeavyForTheLoop):
        decode_images([(progressive, "p")], (32, 32), LIMITS)
    (off_loop,) = await asyncio.to_thread(decode_images, [(progressive, "p")], (32, 32), LIMITS)
    assert np.abs(off_loop.astype(int) - row).max() <= 2  # the same picture


async def test_png_text_is_never_inflated_and_the_image_decodes(client: httpx.AsyncClient) -> None:
    """Pillow inflates zTXt and iTXt chunks while it opens a PNG, about 1,000:1 (62 MiB of text
    from a 64 kB file); the service reads no image text, so text chunks are dropped before
    Pillow sees them, whatever their size: refusing them refused real files (a ComfyUI image's
    workflow, 53 kB of tEXt; large XMP)."""
    for chunks, inflated in ((4, 4_000), (1, 53_000), (62, 1024 * 1024 - 1)):
        response = await client.post(
            CLASSIFY, files={"f": ("t.png", png_with_text(chunks, inflated))}
        )
        assert response.status_code == 200, (chunks, inflated, response.text)
    tracemalloc.start()
    try:
        bomb = png_with_text(62, 1024 * 1024 - 1)
        await asyncio.to_thread(decode_image, bomb, (32, 32), 16_000_000, "image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # 62 MiB had the text been inflated


def test_a_pngs_exif_profile_text_still_turns_it() -> None:
    """The one text Pillow reads an image from is kept: EXIF as ImageMagick writes it, whose
    orientation turns the image (a 2x1 image marked "rotate 90" arrives 1x2, then resized)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    hexed = exif.tobytes().hex()
    profile = f"\nexif\n{len(hexed) // 2:8d}\n{hexed}\n".encode()
    pixels = np.zeros((1, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red on the left: on top once turned
    plain = encode(Image.fromarray(pixels), "PNG")
    marked = plain[:33] + chunk(b"tEXt", b"Raw profile type exif\0" + profile) + plain[33:]
    turned = decode_image(marked, (2, 2), 16_000_000, "image")
    assert turned[0, :, 0].mean() > turned[1, :, 0].mean()  # the red half is the top row now
    flat = decode_image(plain, (2, 2), 16_000_000, "image")
    assert flat[:, 0, 0].mean() > flat[:, 1, 0].mean()  # unmarked: red stays on the left


def test_real_files_around_the_limits_decode() -> None:
    """An animated PNG of 600 frames (two frame chunks each, not counted as ancillary), a PNG
    with a 60 kB ICC profile, and phone files whose scans lie past the first image: a motion
    photo's trailing video (random bytes hold FF DA once per 64 kB) and an MPO's later images."""
    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(600)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    profile = bytes(range(256)) * 240  # 61,440 bytes: Pillow inflates it as it opens the file
    files = {
        "apng": buffer.getvalue(),
        "icc": encode(Image.new("RGB", (8, 8)), "PNG", icc_profile=profile),
        "motion": encode(Image.new("RGB", (64, 64)), "JPEG")
        + np.random.default_rng(0).bytes(8 << 20),
        "mpo": encode(Image.new("RGB", (64, 64)), "MPO", save_all=True,
                      append_images=[Image.new("RGB", (64, 64))] * 40, progressive=True),
    }  # fmt: skip
    for name, data in files.items():
        assert decode_image(data, (32, 32), 16_000_000, name).shape == (32, 32, 3), name


async def test_many_small_files_go_to_the_pool_before_any_header_is_opened() -> None:
    """Each file costs about 0.1 ms whatever its size: 1,024 one-pixel WebP files held the loop
    100-160 ms. Past ``INLINE_FILES`` the request goes to the pool before a header is opened:
    files that would be a 422 there are not even looked at on the loop."""
    gif = encode(Image.new("RGB", (1, 1), (200, 30, 30)), "GIF")
    few = decode_images([(gif, "image")] * INLINE_FILES, (32, 32), LIMITS)
    assert len(few) == INLINE_FILES  # right here, on the loop
    with pytest.raises(TooHeavyForTheLoop):
        decode_images([(b"not an image", "x")] * (INLINE_FILES + 1), (32, 32), LIMITS)
    with pytest.raises(TooHeavyForTheLoop):  # nor decoded from base64
        decode_b64_images([("not base64!", "x")] * (INLINE_FILES + 1), (32, 32), LIMITS)
    many = [(gif, "image")] * (INLINE_FILES + 1)
    rows = await asyncio.to_thread(decode_images, many, (32, 32), LIMITS)
    assert len(rows) == INLINE_FILES + 1


async def test_many_small_files_are_classified_from_the_pool(tight: httpx.AsyncClient) -> None:
    gif = encode(Image.new("RGB", (1, 1), (200, 30, 30)), "GIF")
    files = [("f", (f"{i}.gif", gif)) for i in range(INLINE_FILES + 1)]
    response = await tight.post(f"{CLASSIFY}?top_k=1", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == INLINE_FILES + 1


def documented_gray(pixels: np.ndarray, top: float) -> np.ndarray:
    """The documented result for a wide grayscale image, computed the long way: every pixel
    scaled to 8 bits by ``top`` (negatives 0), then resized to 32 x 32 as RGB."""
    scaled = np.clip(pixels.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8)
    small = Image.fromarray(scaled, "L").resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(small.convert("RGB")).astype(int)


def test_float_and_32_bit_images_are_scaled_at_the_models_size_not_as_a_float64_copy() -> None:
    """Modes F, I and I;16 were scaled as a float64 copy of the whole image with temporaries
    (about 30 bytes a pixel: a 4000 x 4000 float TIFF of 93 kB took 500 MB). They are resized
    in Pillow's own mode first; the result is the documented one within rounding (+-1)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(-2.0, 6.0, 600 * 500, dtype=np.float32).reshape(500, 600)
    cases = {
        "F": (ramp + rng.random(ramp.shape, dtype=np.float32), None),
        "I": (rng.integers(-500, 90_000, (500, 600)).astype(np.int32), None),
        "I;16B": (np.linspace(0, 65535, 500 * 600).reshape(500, 600).astype(">u2"), 65535.0),
        "I;16": (rng.integers(0, 65536, (500, 600)).astype(np.uint16), 65535.0),
    }
    for mode, (pixels, top) in cases.items():
        image = Image.fromarray(pixels)
        assert image.mode == mode
        tiff = encode(image, "TIFF", compression="tiff_adobe_deflate")
        expected = documented_gray(pixels, top or float(pixels.max()))
        tracemalloc.start()
        try:
            row = decode_image(tiff, (32, 32), 16_000_000, mode)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.abs(row.astype(int) - expected).max() <= 1, mode
        assert peak < 500_000, (mode, peak)  # numpy's arrays: a float64 copy alone is 2.4 MB


HELD = """
import sys
from service.api.images import ImageLimits, decode_images
def status(key):
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key))
data = open(sys.argv[1], 'rb').read()
with open('/proc/self/clear_refs', 'w') as peak:
    peak.write('5')  # VmHWM, the peak RSS, starts again from here
before = status('VmRSS')
decode_images([(data, 'x')] * 4, (32, 32), ImageLimits(16_000_000, 64_000_000))
print((status('VmHWM') - before) // 1024)
"""


def test_a_requests_images_are_let_go_one_at_a_time_not_held_until_all_are_decoded(
    tmp_path: Path,
) -> None:
    """Four 3000 x 3000 PNGs (36 MB each decoded) in one request: every decoded image, and a
    copy of each, was held until the last was decoded (206 MB of peak RSS). Each is now turned
    in place, not copied, and closed before the next: about one image's worth."""
    png = tmp_path / "big.png"
    png.write_bytes(encode(Image.new("RGB", (3000, 3000), (9, 99, 199)), "PNG"))
    argv = [sys.executable, "-c", HELD, str(png)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 100, done.stdout  # MB of peak RSS over the RSS before


def test_a_png_of_repeated_icc_profiles_or_a_flood_of_chunks_is_refused_before_it_is_opened() -> (
    None
):
    """Pillow inflates every ICC profile (the PNG spec allows one) and walks every chunk in
    Python: 128 kB of repeated profiles held the loop 55 ms, and a 64 MiB body of them would be
    64 GB to inflate on the pool."""
    profile = chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"p" * 30_000, 9))
    one = png_with_chunks(profile)
    assert decode_image(one, (32, 32), 16_000_000, "image").shape == (32, 32, 3)
    for data, message in (
        (png_with_chunks(profile * 2), "more than one ICC profile"),
        (png_with_chunks(chunk(b"abCd", b"") * (MAX_PNG_ANCILLARY_CHUNKS + 1)), "too many chunks"),
    ):
        with pytest.raises(UnprocessableInput, match=message):
            decode_image(data, (32, 32), 16_000_000, "image")


async def test_image_bytes_past_the_inline_bound_go_to_the_pool() -> None:
    """On the loop only a few small files: a CIFAR-sized PNG is about 3 kB."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    large = encode(Image.fromarray(noise), "PNG")
    small = encode(Image.fromarray(noise[:32, :32]), "PNG")
    assert len(small) <= INLINE_IMAGE_BYTES < len(large)
    assert len(decode_images([(small, "image")], (32, 32), LIMITS)) == 1  # here, on the loop
    with pytest.raises(TooHeavyForTheLoop):
        decode_images([(large, "image")], (32, 32), LIMITS)
    with pytest.raises(TooHeavyForTheLoop):
        decode_b64_images([(base64.b64encode(large).decode(), "b64")], (32, 32), LIMITS)
