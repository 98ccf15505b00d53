"""Property-based API fuzzing: schemathesis against the live ``/openapi.json`` of a real server.

    make fuzz     (FUZZ_EXAMPLES=100 over models/; FUZZ_SEED, FUZZ_WORKERS, FUZZ_OUTPUT)

No response may be a 5xx, each must match the documented schema, status codes, content types
and headers, and the server's log must hold no traceback. ``make test`` runs 8 examples per
operation over the tests' repository. The result is printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.fuzz import FuzzSettings, fuzz_passes, summary
from tests.support.logged_server import logged_server
from tests.support.models import make_model_repo
from tests.support.openapi import documented_operations

pytestmark = pytest.mark.slow  # about 20 s in make test


def repository(tmp_path: Path) -> Path:
    """FUZZ_MODEL_REPOSITORY (make fuzz: models/), else the tests' tiny repository."""
    given = os.environ.get("FUZZ_MODEL_REPOSITORY")
    return Path(given).resolve() if given else make_model_repo(tmp_path)


def test_fuzz_no_5xx_and_responses_match_the_schema(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    settings = FuzzSettings.from_env()
    token = secrets.token_hex(16)
    unset = ("ADMIN_TOKEN_FILE", "ADMIN_LOOPBACK")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(POLL_INTERVAL_S="0", PROVIDERS="CPUExecutionProvider", ADMIN_TOKEN=token)
    with logged_server(repository(tmp_path), env, tmp_path / "server.log", grpc=False) as server:
        documented = documented_operations(httpx.get(f"{server.url}/openapi.json").json())
        started = time.monotonic()
        runs = fuzz_passes(server.url, token, settings, tmp_path)
        seconds = round(time.monotonic() - started, 1)
    result = {**summary(runs, settings), "server_tracebacks": server.log.count("Traceback")}
    result["seconds"] = seconds
    reports = [run.stdout + run.stderr for run in runs]
    if output := os.environ.get("FUZZ_OUTPUT"):  # schemathesis' full reports and the log
        Path(output).write_text("\n".join(reports) + "\n--- server log ---\n" + server.log)
    record_property("result", json.dumps(result))
    tails = "\n".join(report[-6000:] for report in reports)
    assert result["schemathesis_exit"] == [0, 0] and result["failures"] == 0, tails
    assert result["server_tracebacks"] == 0, server.log[-4000:]
    assert result["operations"] == len(documented) and result["cases"] > 100
