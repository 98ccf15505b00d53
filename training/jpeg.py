"""JPEG robustness augmentation: a share of the training images re-encoded at random qualities.

Uploads arrive re-compressed (the lecture model loses about 2 points on the test split at JPEG
quality 50), so a recipe may train on such copies (``--jpeg-p``). Pillow encodes and decodes
with the GIL released, so the next epoch's copy is made in a thread while this epoch trains;
what each epoch gets depends only on the seed and the epoch, so a resumed or distributed run
sees the same pixels.
"""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from training.config import TrainConfig


def reencode(
    images: np.ndarray, p: float, qualities: tuple[int, int], seed: int, epoch: int
) -> np.ndarray:
    """A copy of ``images`` (N, 32, 32, 3) uint8 in which each image, with probability ``p``, has
    been through one JPEG round trip at a quality drawn from ``qualities`` (inclusive)."""
    rng = np.random.default_rng([seed, epoch])
    chosen = np.flatnonzero(rng.random(len(images)) < p)
    quality = rng.integers(qualities[0], qualities[1] + 1, len(chosen))
    out = images.copy()
    for i, q in zip(chosen, quality, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, "JPEG", quality=int(q))
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out


class JpegEpochs:
    """Each epoch's re-encoded copy of the training images, the next one made ahead in a thread."""

    def __init__(self, images: np.ndarray, config: TrainConfig, first_epoch: int) -> None:
        if not 0 < config.jpeg_p <= 1:
            raise ValueError(f"--jpeg-p must be in (0, 1], got {config.jpeg_p}")
        if not 1 <= config.jpeg_min_quality <= config.jpeg_max_quality <= 100:
            raise ValueError("JPEG qualities must satisfy 1 <= --jpeg-min-quality <= max <= 100")
        self.images, self.config = images, config
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="jpeg")
        self.ahead: Future[np.ndarray] = self._submit(first_epoch)
        self.epoch = first_epoch

    def _submit(self, epoch: int) -> Future[np.ndarray]:
        c = self.config
        qualities = (c.jpeg_min_quality, c.jpeg_max_quality)
        return self.pool.submit(reencode, self.images, c.jpeg_p, qualities, c.seed + 3, epoch)

    def images_for(self, epoch: int) -> np.ndarray:
        """This epoch's images (made ahead), and the next epoch's started."""
        if epoch != self.epoch:  # epochs are asked for in order; anything else is made now
            self.ahead.cancel()
            self.ahead = self._submit(epoch)
        images = self.ahead.result()
        self.epoch = epoch + 1
        if epoch < self.config.epochs:
            self.ahead = self._submit(epoch + 1)
        return images

    def close(self) -> None:
        self.ahead.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
