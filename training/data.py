"""CIFAR-10 readers: the official python batches and an image-folder layout, with a decoded cache.

Both give uint8 ``(N, 32, 32, 3)`` RGB arrays and int64 labels in the standard class order. Any
missing, corrupt or inconsistent file stops the run with a ``DataError`` naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.errors import DataError

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# The official python-version archive and the MD5 published beside it on the CIFAR page.
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64 in 0..9

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int, seed: int) -> Split:
        """A seeded random subset of ``n`` images (all of them when ``n`` is 0 or too large).

        Random, not the first ``n``: an image folder is sorted by class.
        """
        if n <= 0 or n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Split(self.images[pick], self.labels[pick])


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    identity: dict[str, Any] = field(default_factory=dict)  # format, root, sha256: for the card
    feedback: Split | None = None  # labelled traffic the retrain job adds to the training images


def load_cifar10(root: Path, cache_dir: Path | None = Path(".cache")) -> Cifar10:
    """Read CIFAR-10 from ``root``: a ``cifar-10-batches-py`` folder (or one holding it), or an
    image folder ``<root>/<split>/<class>/*.jpg``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such data folder (extract cifar10-jpeg.tar.gz, or pass --data)"
        )
    if root.name != BATCHES_DIR and (root / BATCHES_DIR).is_dir():
        root = root / BATCHES_DIR
    if (root / TEST_BATCH).exists() or root.name == BATCHES_DIR:
        return read_python_batches(root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return read_image_folder(root, cache_dir)
    raise DataError(
        f"{root}: neither a {BATCHES_DIR}/ folder nor an image folder with train/ and test/"
    )


# --- the official python batches -------------------------------------------------------------


def _read_batch(path: Path, digest: Any) -> Split:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing CIFAR-10 batch file") from None
    digest.update(path.name.encode() + b"\0" + raw)
    try:
        batch = pickle.loads(raw, encoding="bytes")  # the official files are trusted local data
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: batch lacks 'data' or 'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(
            f"{path}: {len(labels)} labels for {len(data)} images, or labels not in 0..9"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW planes -> NHWC
    return Split(np.ascontiguousarray(images), labels)


def _concat(splits: list[Split]) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


def read_python_batches(root: Path) -> Cifar10:
    digest = hashlib.sha256()
    train = _concat([_read_batch(root / name, digest) for name in TRAIN_BATCHES])
    test = _read_batch(root / TEST_BATCH, digest)
    identity = {"format": "cifar-10-batches-py", "root": str(root), "sha256": digest.hexdigest()}
    return Cifar10(train, test, identity)


def download_cifar10(dest: Path, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Fetch the official archive, check its published MD5, unpack the batches atomically.

    Where the network allows it; nothing is left behind on failure.
    """
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / BATCHES_DIR
    if final.is_dir():
        return final
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise DataError(f"{url}: download failed ({exc})") from None
        got = hashlib.md5(archive.read_bytes()).hexdigest()
        if got != md5:
            raise DataError(f"{url}: bad checksum: MD5 {got}, expected {md5}")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{url}: archive cannot be unpacked ({exc})") from None
        if not (Path(tmp) / BATCHES_DIR).is_dir():
            raise DataError(f"{url}: archive holds no {BATCHES_DIR}/ folder")
        os.replace(Path(tmp) / BATCHES_DIR, final)
    return final


# --- image folders ---------------------------------------------------------------------------


def _list_split(root: Path, split: str) -> list[tuple[Path, int]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder}: missing split folder")
    files: list[tuple[Path, int]] = []
    for class_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not class_dir.is_dir():
            raise DataError(f"{class_dir}: expected only class folders in {folder}")
        if class_dir.name not in CLASS_NAMES:
            raise DataError(
                f"{class_dir}: unknown class folder {class_dir.name!r}; "
                f"expected one of {', '.join(CLASS_NAMES)}"
            )
        label = CLASS_NAMES.index(class_dir.name)
        files += [
            (p, label)
            for p in sorted(class_dir.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ]
    if not files:
        raise DataError(f"{folder}: no images ({'/'.join(IMAGE_SUFFIXES)}) in its class folders")
    return files


def _decode(path: Path, raw: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()  # decodes fully: a truncated file fails here, not later
            if im.size != IMAGE_SHAPE[:2]:
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def _fingerprint(root: Path, files: list[tuple[Path, int]]) -> str:
    """Cheap key for the cache: names, sizes and modification times, not contents."""
    digest = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        digest.update(
            f"{path.relative_to(root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def read_image_folder(root: Path, cache_dir: Path | None = None) -> Cifar10:
    listing = {split: _list_split(root, split) for split in ("train", "test")}
    key = _fingerprint(root, listing["train"] + listing["test"])
    cache = cache_dir / f"cifar10-images-{key[:16]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as z:
                return Cifar10(
                    Split(z["train_images"], z["train_labels"]),
                    Split(z["test_images"], z["test_labels"]),
                    {"format": "image-folder", "root": str(root), "sha256": str(z["sha256"])},
                )
        except (OSError, KeyError, ValueError):
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    digest = hashlib.sha256()  # over names and contents: the data set's identity in the card
    splits: dict[str, Split] = {}
    for split, files in listing.items():
        images = np.empty((len(files), *IMAGE_SHAPE), dtype=np.uint8)
        for i, (path, _) in enumerate(files):
            raw = path.read_bytes()
            digest.update(f"{path.relative_to(root)}\0".encode() + raw)
            images[i] = _decode(path, raw)
        splits[split] = Split(images, np.array([label for _, label in files], dtype=np.int64))
    sha = digest.hexdigest()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    train_images=splits["train"].images,
                    train_labels=splits["train"].labels,
                    test_images=splits["test"].images,
                    test_labels=splits["test"].labels,
                    sha256=np.array(sha),
                )
            os.replace(tmp, cache)
        finally:
            Path(tmp).unlink(missing_ok=True)
    identity = {"format": "image-folder", "root": str(root), "sha256": sha}
    return Cifar10(splits["train"], splits["test"], identity)


def train_val_split(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``val_size`` random training images (never the test split) for validation."""
    if not 0 < val_size < len(train):
        raise DataError(f"validation size {val_size} must be between 1 and {len(train) - 1}")
    order = np.random.default_rng(seed).permutation(len(train))
    fit, val = order[val_size:], order[:val_size]
    return Split(train.images[fit], train.labels[fit]), Split(train.images[val], train.labels[val])
