"""``make help``: every target of the Makefile with its one line, and what ``make`` alone prints."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.servers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def make(*args: str) -> str:
    done = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_target_with_a_line_and_is_what_make_alone_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z0-9-]*):(?!=)", makefile, flags=re.MULTILINE)
    listed = dict(re.findall(r"^  (\S+) +(\S.*)$", make("help"), flags=re.MULTILINE))
    assert sorted(listed) == sorted(targets)
    assert "serve" in listed and "test" in listed
    assert make() == make("help")
