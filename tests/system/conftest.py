"""The system suites: the container check (marked ``containers``: ``make image-check``, that is
``pytest tests/system --image-check [--no-gpu ...]``), the soak and the API fuzz. Here: the
container check's session fixtures (the engine, the base images, the images built once), steps
that stop at the first failure (``incremental``), and what each check found, printed at the end.
"""

from __future__ import annotations

import atexit
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.classify import DATA
from tests.support.engines import BASES, Engine, base_image, find_engine
from tests.support.image_builds import Builder, BuiltImage, build_trainer, write_build_secrets

NOTES = pytest.StashKey[list[str]]()
FIRST_FAILURE = pytest.StashKey[dict[str, str]]()


def note(config: pytest.Config, line: str) -> None:
    """A line for the summary from a session fixture (a base image chosen, an image built)."""
    config.stash.setdefault(NOTES, []).append(line)


# --- steps that depend on the ones before: a failure skips the rest of the module -----------


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    failed = call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception)
    if failed and item.get_closest_marker("incremental"):
        item.config.stash.setdefault(FIRST_FAILURE, {}).setdefault(str(item.path), item.name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("incremental"):
        failed = item.config.stash.get(FIRST_FAILURE, {}).get(str(item.path))
        if failed is not None:
            pytest.skip(f"stopped after the failed check {failed}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What each check found (its ``detail`` property) and the session's notes."""
    notes: list[str] = config.stash.get(NOTES, [])
    lines = list(notes)
    for status in ("passed", "failed"):
        for report in terminalreporter.stats.get(status, []):
            for key, value in getattr(report, "user_properties", []):
                if key in ("detail", "result") and report.when == "call":
                    lines.append(f"{status.upper()[:4]}  {report.head_line}: {value}")
    if lines:
        terminalreporter.write_sep("-", "system checks: what they found")
        for line in lines:
            terminalreporter.write_line(line)


# --- the container check's session --------------------------------------------------------


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # pytest ends the session and tears down


@pytest.fixture(scope="session")
def engine(pytestconfig: pytest.Config) -> Iterator[Engine]:
    """docker or podman; what the run creates is removed at the end, also when a check fails or
    the run is interrupted (SIGINT, SIGTERM, SIGHUP)."""
    found = find_engine(uuid.uuid4().hex[:8])
    if found is None:
        pytest.exit("neither docker nor podman answers here: nothing was checked "
                    "(make container-engine installs podman as root)", returncode=1)  # fmt: skip
    if not DATA.is_dir():
        pytest.exit(f"{DATA} missing (make data)", returncode=1)
    note(pytestconfig, f"engine: {found.name} " + found("--version").stdout.split()[-1])
    atexit.register(found.clean)
    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield found
    finally:
        found.clean()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def image_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-check")


@pytest.fixture(scope="session")
def builder(pytestconfig: pytest.Config, engine: Engine, image_work: Path) -> Builder:
    """Builds with Docker Hub's base images where present, else the Debian stand-ins."""
    bases = {}
    for key in BASES:
        bases[key], how = base_image(engine, key, pytestconfig.getoption("pull"))
        note(pytestconfig, f"base {key}: {how}")
    return Builder(engine, bases, write_build_secrets(image_work / "secrets"))


@pytest.fixture(scope="session")
def api_image(pytestconfig: pytest.Config, engine: Engine, builder: Builder) -> BuiltImage:
    seconds = builder.build("api", "cifar-serve-api")
    built = BuiltImage(
        "cifar-serve-api", f"{seconds:.0f} s, {engine.image_size('cifar-serve-api')}"
    )
    note(pytestconfig, f"build api: {built.how}")
    return built


@pytest.fixture(scope="session")
def trainer_image(pytestconfig: pytest.Config, builder: Builder) -> BuiltImage:
    """The trainer, where its wheel can be had (else the checks that need it are skipped)."""
    if pytestconfig.getoption("no_trainer"):
        pytest.skip("--no-trainer")
    built = build_trainer(builder, "cifar-serve-trainer")
    if isinstance(built, str):
        pytest.skip(built)
    note(pytestconfig, f"build trainer: {built.how}")
    return built
