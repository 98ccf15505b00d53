"""The interoperability suite's fixtures: a real server (REST and gRPC on loopback) serving the
shipped lecture model, real CIFAR-10 test images, and the in-process onnxruntime answer for them.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.settings import Settings
from tests.e2e.running import Running, running_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = "cifar10_cnn"
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
EXTRACTED = ROOT / "data" / "cifar10-jpeg" / "test"
PER_CLASS = 2


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # a data record, not a test class

    label: str
    jpeg: bytes  # the file as it lies in the data set

    @property
    def pixels(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.jpeg)).convert("RGB"), dtype=np.uint8)


def _from_tarball(per_class: int) -> list[TestImage]:
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


def _from_folder(per_class: int) -> list[TestImage]:
    return [
        TestImage(folder.name, path.read_bytes())
        for folder in sorted(EXTRACTED.iterdir())
        for path in sorted(folder.glob("*.jpg"))[:per_class]
    ]


@pytest.fixture(scope="session")
def cifar_images() -> list[TestImage]:
    """Two real test images of each CIFAR-10 class, from ``../shared/data`` (or ``data/``)."""
    if EXTRACTED.is_dir():
        images = _from_folder(PER_CLASS)
    elif TARBALL.is_file():
        images = _from_tarball(PER_CLASS)
    else:
        pytest.skip(f"no CIFAR-10 test images at {TARBALL} or {EXTRACTED}")
    assert len(images) == 10 * PER_CLASS
    return images


@pytest.fixture(scope="session")
def pixels(cifar_images: list[TestImage]) -> np.ndarray:
    return np.stack([image.pixels for image in cifar_images])  # (20, 32, 32, 3) uint8


@pytest.fixture(scope="session")
def expected(pixels: np.ndarray) -> np.ndarray:
    """What the shipped graph answers in process (onnxruntime, CPU): the probabilities."""
    session = ort.InferenceSession(
        str(ROOT / "models" / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities: np.ndarray = session.run(["probabilities"], {"images": pixels})[0]
    return probabilities


def lecture_repository(root: Path) -> Path:
    """A repository holding only the shipped lecture model (quick to load)."""
    repo = root / "models"
    shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The real service, REST and gRPC on free loopback ports, as ``make serve`` runs it."""
    repo = lecture_repository(tmp_path_factory.mktemp("interop"))
    settings = Settings(model_repository=repo, providers=["CPUExecutionProvider"])
    with running_server(settings) as running:
        yield running
