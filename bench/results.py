"""Every benchmark and training command writes its figures here, and docs are rendered from them.

One JSON file per result set, ``docs/results/<name>.json``, holding the command that produced it,
the commit it ran on and when, so a figure in the docs can always be traced to a run. Standard
library only: the training package writes through it too.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def _root() -> Path:
    """The checkout the figures belong to: the one that holds this package, or, where ``bench``
    is installed as a package, the working directory (a checkout's root)."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


ROOT = _root()
RESULTS_DIR = ROOT / "docs" / "results"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit() -> str:
    """The commit the run used, with ``-dirty`` when the tree had uncommitted changes."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _command() -> str:
    """How this process was started, as a user would type it (``python -m pkg ...``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None:
        program = "python " + sys.argv[0]
    else:
        program = "python -m " + spec.name.removesuffix(".__main__")
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def make_record(
    name: str, results: dict[str, Any], *, command: str | None = None
) -> dict[str, Any]:
    """The record :func:`write_result` writes: ``results`` with command, commit, time, machine."""
    return {
        "name": name,
        "command": command or _command(),
        "commit": _commit(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(terse=True)},
        "results": results,
    }


def write_result(
    name: str, results: dict[str, Any], *, command: str | None = None, directory: Path | None = None
) -> Path:
    """Write ``results`` as ``<directory>/<name>.json`` with command, commit, time and machine."""
    path = (directory or RESULTS_DIR) / f"{name}.json"
    record = make_record(name, results, command=command)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def read_result(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The whole record written by :func:`write_result` (``results`` plus where it came from)."""
    record: dict[str, Any] = json.loads(((directory or RESULTS_DIR) / f"{name}.json").read_text())
    return record
