"""The trainer image (``make image-check``, where its wheel can be had): CPU torch from the CPU
index only, no CUDA packages, ``pip check`` clean."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.engines import Engine
from tests.support.image_builds import BuiltImage, torch_pin

pytestmark = pytest.mark.containers


def test_trainer_image_has_cpu_torch_from_the_cpu_index_only(
    engine: Engine, trainer_image: BuiltImage, record_property: Callable[[str, object], None]
) -> None:
    image = trainer_image.tag
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    found = engine("run", "--rm", image, "python", "-c", probe).stdout.split()
    assert found == [torch_pin(), "None"], f"torch in the image: {found}"
    engine("run", "--rm", image, "pip", "check")
    listing = engine("run", "--rm", image, "pip", "list").stdout
    assert "nvidia" not in listing.lower(), "CUDA packages in the trainer image"
    record_property("detail", f"torch {found[0]} (no CUDA) {trainer_image.how}")
