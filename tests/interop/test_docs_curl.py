"""The ``curl`` examples in README.md and docs/*.md, run as written against a real server, so the
docs cannot drift from it. ``localhost:8000`` becomes the test server's port; ``cat.png``,
``ship.jpg`` and ``cat.jpg`` are real CIFAR-10 test images in the working folder, beside an
``.admin-token`` that the server reads through ``ADMIN_TOKEN_FILE``, as ``make serve`` sets it up.
An example aimed at another host (``http://host:8000``) is not runnable here and is counted as
skipped.
"""

from __future__ import annotations

import io
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from service.settings import Settings
from tests.support.interop import ROOT, TestImage, lecture_repository
from tests.support.servers import running_server

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STATUS_MARK = "\n@@status="


def _complete(command: str) -> bool:
    """Whether ``command`` is a whole shell command (no open quote, no trailing backslash)."""
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def curl_examples(text: str) -> list[str]:
    """Every ``curl`` command in a markdown text's code, with its continuation lines."""
    commands: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("curl "):
            command = lines[i].strip()
            while not _complete(command) and i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]
            commands.append(command)
        i += 1
    return commands


def test_the_docs_have_curl_examples_to_run() -> None:
    found = {path.name: len(curl_examples(path.read_text())) for path in DOCS}
    assert sum(found.values()) >= 15, found  # the API docs' examples are found at all
    assert all(_complete(c) for path in DOCS for c in curl_examples(path.read_text()))


@pytest.fixture
def workdir(tmp_path: Path, cifar_images: list[TestImage]) -> Path:
    """A folder holding the image files and the admin token file the examples name."""
    (tmp_path / ".admin-token").write_text(secrets.token_urlsafe(32) + "\n")
    by_label = {image.label: image for image in cifar_images}
    Image.open(io.BytesIO(by_label["cat"].jpeg)).save(tmp_path / "cat.png")
    (tmp_path / "cat.jpg").write_bytes(by_label["cat"].jpeg)
    (tmp_path / "ship.jpg").write_bytes(by_label["ship"].jpeg)
    return tmp_path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_every_curl_example_in_the_docs_succeeds(workdir: Path) -> None:
    settings = Settings(
        model_repository=lecture_repository(workdir),
        providers=["CPUExecutionProvider"],
        admin_token_file=workdir / ".admin-token",
    )
    ran, skipped, failures = 0, [], []
    with running_server(settings, grpc=False) as server:
        for doc in DOCS:
            for example in curl_examples(doc.read_text()):
                if re.search(r"https?://(?!localhost|127\.0\.0\.1)", example):
                    skipped.append(example)
                    continue
                command = example.replace("localhost:8000", server.address)
                # curl's own flags added in front: quiet, the status on the last line
                command = command.replace("curl ", f"curl -sS -w '{STATUS_MARK}%{{http_code}}' ", 1)
                done = subprocess.run(
                    ["bash", "-c", command],
                    cwd=workdir,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                ran += 1
                status = done.stdout.rpartition(STATUS_MARK)[2].strip()
                if done.returncode != 0 or not status.startswith("2"):
                    failures.append(
                        f"{doc.name}: {example}\n-> exit {done.returncode}, status {status}: "
                        f"{done.stdout[:300]}{done.stderr[:300]}"
                    )
    assert not failures, "\n\n".join(failures)
    assert ran >= 15 and len(skipped) <= 2, (ran, skipped)
