"""What the interoperability suite shares: real CIFAR-10 test images (from ``../shared/data`` or
``data/``) and a repository holding only the shipped lecture model."""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODEL = "cifar10_cnn"
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
EXTRACTED = ROOT / "data" / "cifar10-jpeg" / "test"
PER_CLASS = 2
# The version the default 'latest' policy serves out of the shipped folder (the calibrated one).
VERSION = max(int(d.name) for d in (ROOT / "models" / MODEL).iterdir() if d.name.isdigit())


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # a data record, not a test class

    label: str
    jpeg: bytes  # the file as it lies in the data set

    @property
    def pixels(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.jpeg)).convert("RGB"), dtype=np.uint8)


def images_from_tarball(per_class: int) -> list[TestImage]:
    found: dict[str, list[TestImage]] = {}
    with tarfile.open(TARBALL, "r:gz") as tar:  # the test split comes first: a short read
        for member in tar:
            parts = member.name.split("/")  # cifar10-jpeg/test/<class>/NNNN.jpg
            if len(parts) != 4 or parts[1] != "test" or not member.isfile():
                if len(found) == 10 and all(len(v) >= per_class for v in found.values()):
                    break
                continue
            images = found.setdefault(parts[2], [])
            if len(images) < per_class:
                handle = tar.extractfile(member)
                assert handle is not None
                images.append(TestImage(parts[2], handle.read()))
    return [image for label in sorted(found) for image in found[label]]


def images_from_folder(per_class: int) -> list[TestImage]:
    return [
        TestImage(folder.name, path.read_bytes())
        for folder in sorted(EXTRACTED.iterdir())
        for path in sorted(folder.glob("*.jpg"))[:per_class]
    ]


def lecture_repository(root: Path) -> Path:
    """A repository holding only the shipped lecture model (quick to load)."""
    repo = root / "models"
    shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
    return repo
