"""A copy of the image-folder CIFAR-10 re-encoded at another JPEG quality: the dose-response side
of issue 18's data question (how much accuracy does one more JPEG pass cost?).

The shipped copy was written by Pillow at quality 75 with 4:2:0 chroma subsampling (its files'
quantization tables and sampling say so); this writes the same way at another quality, keeps the
``<split>/<class>/NNNN.jpg`` layout, and measures how far the new pixels are from the old ones
(mean absolute difference in levels of 255): the size of the extra loss each accuracy is set
against in docs/training-94.md.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.errors import DataError
from training.data import IMAGE_SUFFIXES


def recompress(source: Path, dest: Path, quality: int) -> dict[str, float | int]:
    """Re-encode every ``source/<split>/<class>/<image>`` into ``dest`` as JPEG; returns the
    number of files and the mean absolute change of their pixels."""
    files = sorted(p for p in source.glob("*/*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no <split>/<class>/<image> files")
    total_diff, total_values = 0, 0
    for path in files:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)  # Pillow's 4:2:0, as before
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as image:
            new = np.asarray(image.convert("RGB"))
        total_diff += int(np.abs(new.astype(np.int16) - pixels).sum())
        total_values += pixels.size
        out = (dest / path.relative_to(source)).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return {
        "files": len(files),
        "quality": quality,
        "mean_abs_diff": total_diff / total_values,
    }
