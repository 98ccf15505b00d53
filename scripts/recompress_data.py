"""A copy of the image-folder CIFAR-10 re-encoded at another JPEG quality: the dose-response side
of issue 18's data question (how much accuracy does one more JPEG pass cost?).

    python scripts/recompress_data.py data/cifar10-jpeg data/cifar10-jpeg-q50 --quality 50
    make ablate-94 ABLATE=none DATA=data/cifar10-jpeg-q50

The shipped copy was written by Pillow at quality 75 with 4:2:0 chroma subsampling (its files'
quantization tables and sampling say so); this writes the same way at ``--quality``, keeps the
``<split>/<class>/NNNN.jpg`` layout, and reports how far the new pixels are from the old ones
(mean absolute difference in levels of 255): the size of the extra loss each accuracy is set
against in docs/training-94.md.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data import IMAGE_SUFFIXES  # noqa: E402


def recompress(source: Path, dest: Path, quality: int) -> dict[str, float | int]:
    """Re-encode every ``source/<split>/<class>/<image>`` into ``dest`` as JPEG; returns the
    number of files and the mean absolute change of their pixels."""
    files = sorted(p for p in source.glob("*/*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"{source}: no <split>/<class>/<image> files")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="image-folder CIFAR-10 (<split>/<class>/*.jpg)")
    parser.add_argument("dest", type=Path, help="where the re-encoded copy goes (git-ignored)")
    parser.add_argument("--quality", type=int, default=50, help="JPEG quality, 1-95")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality {args.quality}: Pillow's useful range is 1-95")
    if args.dest.resolve() == args.source.resolve():
        parser.error("dest must differ from source")
    stats = recompress(args.source, args.dest, args.quality)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
