"""Shared fixtures: a model repository on disk of tiny real ONNX graphs with valid cards (built by
``tests.support.models.make_model_repo``, which any test can call for the repository it needs).
And the container suite's switch: tests marked ``containers`` (tests/system) build and run the
images with docker or podman, so they run only with ``--image-check`` (``make image-check``),
which then runs them alone; ``make test`` deselects them and needs no container engine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.core.throttled_log import ThrottledLog
from tests.support.models import make_model_repo


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("image-check", "the container suite (make image-check)")
    group.addoption(
        "--image-check", action="store_true",
        help="run the container suite (tests marked containers) and nothing else: build the images "
        "with docker or podman and run them as a user would (minutes)",
    )  # fmt: skip
    group.addoption("--no-gpu", action="store_true", help="skip the api-gpu image")
    group.addoption("--no-trainer", action="store_true", help="skip the trainer image")
    group.addoption("--no-compose", action="store_true", help="skip the compose checks")
    group.addoption("--pull", action="store_true", help="try Docker Hub for the base images")
    group.addoption("--images", type=int, default=20, help="real images to classify")
    group.addoption(
        "--max-burst-s", type=float, default=15.0,
        help="longest stretch of errors allowed while replicas are recreated",
    )  # fmt: skip
    group.addoption(
        "--gpu-min-free-gb", type=float, default=20.0,
        help="free disk the api-gpu build needs, else it is skipped",
    )  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --image-check only the container suite runs; without it, only the others (the
    container suite is deselected, not skipped: make test has nothing it did not check)."""
    wanted = bool(config.getoption("--image-check"))
    dropped = [item for item in items if bool(item.get_closest_marker("containers")) != wanted]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if bool(item.get_closest_marker("containers")) == wanted]


@pytest.fixture(scope="session", autouse=True)
def _prediction_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers the tests start (in process or as children) keep their SQLite prediction log in a
    temporary folder, not in the working tree's data/service (a test may point DATA_DIR at its
    own)."""
    before = {key: os.environ.get(key) for key in ("DATA_DIR", "PREDICTION_LOG")}
    os.environ["DATA_DIR"] = str(tmp_path_factory.mktemp("prediction-log"))
    os.environ["PREDICTION_LOG"] = "true"  # off by default; the tests exercise it
    yield
    for key, value in before.items():
        if value is None:
            del os.environ[key]
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def _one_worker() -> Iterator[None]:
    """Servers the tests build or start run one process (WORKERS=auto is the default, and would
    start one per core): a test about workers asks for them (``--workers 2``, ``workers=2``)."""
    before = os.environ.get("WORKERS")
    os.environ["WORKERS"] = "1"
    yield
    if before is None:
        del os.environ["WORKERS"]
    else:
        os.environ["WORKERS"] = before


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    return make_model_repo(tmp_path)


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    def build(**kwargs: Any) -> Path:
        return make_model_repo(tmp_path, **kwargs)

    return build


@pytest.fixture(autouse=True)
def fresh_log_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the service's log throttles (``ThrottledLog``, module-level) empty:
    a line another test caused less than ``INTERVAL_S`` before would be counted, not written,
    and a test of that line would pass or fail by the order the tests ran in."""
    for module in [m for name, m in sys.modules.items() if name.startswith("service.")]:
        for name, value in list(vars(module).items()):
            if isinstance(value, ThrottledLog):
                monkeypatch.setattr(module, name, ThrottledLog(value._logger))
