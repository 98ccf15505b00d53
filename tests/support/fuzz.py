"""The API fuzz (``tests/system/test_fuzz.py``): schemathesis against a live ``/openapi.json``,
every operation with bounded, seeded examples (documented examples, coverage, fuzzing and
stateful phases) and every check but ``positive_data_acceptance``: a schema cannot say that an
image must decode or that a shape must match the data, so schema-valid requests may rightly get
a 4xx. Two passes: the real model's name with the admin token, then random names without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKS_EXCLUDED = "positive_data_acceptance"


@dataclass(frozen=True)
class FuzzSettings:
    """FUZZ_EXAMPLES per operation and phase (8 in make test, 100 in make fuzz), FUZZ_SEED,
    FUZZ_WORKERS (schemathesis' concurrent workers); the model and version pinned in pass 1."""

    max_examples: int = 8
    seed: int = 6
    workers: int = 1
    model: str = "cifar10_cnn"
    version: str = "1"

    @classmethod
    def from_env(cls) -> FuzzSettings:
        return cls(
            int(os.environ.get("FUZZ_EXAMPLES", cls.max_examples)),
            int(os.environ.get("FUZZ_SEED", cls.seed)),
            int(os.environ.get("FUZZ_WORKERS", cls.workers)),
        )


def schemathesis_command(url: str, settings: FuzzSettings) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
        "--checks=all", f"--exclude-checks={CHECKS_EXCLUDED}",
        f"--max-examples={settings.max_examples}", f"--seed={settings.seed}",
        f"--workers={settings.workers}", "--generation-database=none",
        "--request-timeout=30", "--no-color",
    ]  # fmt: skip


def fuzz_passes(
    url: str, token: str, settings: FuzzSettings, scratch: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Both passes, run to the end (their output captured)."""
    command = schemathesis_command(url, settings)
    # Pass 1: the real model and version in the paths (drawn at random they mostly meet 404s)
    # and the admin token, so the repository API is fuzzed too; unload is left out so that
    # readiness and infer keep a model to answer with.
    pinned = scratch / "pinned"
    pinned.mkdir()
    (pinned / "schemathesis.toml").write_text(
        f'[parameters]\nname = "{settings.model}"\nversion = "{settings.version}"\n'
    )
    authorized = [f"--header=Authorization: Bearer {token}", "--exclude-path-regex=/unload$"]
    runs = [subprocess.run([*command, *authorized], capture_output=True, text=True, cwd=pinned)]
    # Pass 2: every operation, names drawn at random, no token (the repository API must refuse
    # it: the ignored_auth check).
    runs.append(subprocess.run(command, capture_output=True, text=True, cwd=scratch))
    return runs


def summary(runs: list[subprocess.CompletedProcess[str]], settings: FuzzSettings) -> dict[str, Any]:
    """Operations, cases and failures as schemathesis reported them, and each pass's exit."""
    reports = [run.stdout + run.stderr for run in runs]

    def total(pattern: str) -> int:
        return sum(int(m.group(1)) for r in reports if (m := re.search(pattern, r)))

    tested = [int(m.group(1)) for r in reports if (m := re.search(r"Tested: (\d+)", r))]
    return {
        "operations": max(tested, default=0),
        "cases": total(r"(\d+) generated"),
        "failures": total(r"found (\d+) unique failures"),
        "seed": settings.seed,
        "max_examples": settings.max_examples,
        "schemathesis_exit": [run.returncode for run in runs],
    }
