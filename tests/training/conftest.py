"""The training tests' fixtures: small CIFAR-10 look-alikes (``tests.support.training_inputs``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training_inputs import write_image_folder, write_python_batches


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "cifar")


@pytest.fixture
def python_batches(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "batches")
