"""The interoperability suite's fixtures: a real server (REST and gRPC on loopback) serving the
shipped lecture model, real CIFAR-10 test images, and the in-process onnxruntime answer for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from service.settings import Settings
from tests.support.interop import (
    EXTRACTED,
    MODEL,
    PER_CLASS,
    ROOT,
    TARBALL,
    VERSION,
    TestImage,
    images_from_folder,
    images_from_tarball,
    lecture_repository,
)
from tests.support.servers import Running, running_server


@pytest.fixture(scope="session")
def cifar_images() -> list[TestImage]:
    """Two real test images of each CIFAR-10 class, from ``../shared/data`` (or ``data/``)."""
    if EXTRACTED.is_dir():
        images = images_from_folder(PER_CLASS)
    elif TARBALL.is_file():
        images = images_from_tarball(PER_CLASS)
    else:
        pytest.skip(f"no CIFAR-10 test images at {TARBALL} or {EXTRACTED}")
    assert len(images) == 10 * PER_CLASS
    return images


@pytest.fixture(scope="session")
def pixels(cifar_images: list[TestImage]) -> np.ndarray:
    return np.stack([image.pixels for image in cifar_images])  # (20, 32, 32, 3) uint8


@pytest.fixture(scope="session")
def expected(pixels: np.ndarray) -> np.ndarray:
    """What the served graph answers in process (onnxruntime, CPU): the probabilities."""
    session = ort.InferenceSession(
        str(ROOT / "models" / MODEL / str(VERSION) / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    probabilities: np.ndarray = session.run(["probabilities"], {"images": pixels})[0]
    return probabilities


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The real service, REST and gRPC on free loopback ports, as ``make serve`` runs it."""
    repo = lecture_repository(tmp_path_factory.mktemp("interop"))
    settings = Settings(model_repository=repo, providers=["CPUExecutionProvider"])
    with running_server(settings) as running:
        yield running
