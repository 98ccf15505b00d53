"""Shared fixtures: a model repository on disk of tiny real ONNX graphs with valid cards (built by
``tests.support.models.make_model_repo``, which any test can call for the repository it needs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.models import make_model_repo


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    return make_model_repo(tmp_path)


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    def build(**kwargs: Any) -> Path:
        return make_model_repo(tmp_path, **kwargs)

    return build
