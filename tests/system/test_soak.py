"""The soak: a real server under mixed load at concurrency 64, watching for 5xx, dropped
connections and memory growth.

    make soak     (SOAK_SECONDS=180 over models/; SOAK_WARMUP_S, SOAK_CONCURRENCY)

``make test`` runs it for 20 s (warm-up 8 s) over the tests' repository. The result (the JSON
the docs quote) is printed at the end of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.logged_server import logged_server
from tests.support.models import make_model_repo
from tests.support.openapi import documented_operations
from tests.support.soak import GRPC_INFER, SoakSettings, soak

pytestmark = pytest.mark.slow  # 20 s in make test, minutes in make soak


def repository(tmp_path: Path) -> Path:
    """SOAK_MODEL_REPOSITORY (make soak: models/), else the tests' tiny repository."""
    given = os.environ.get("SOAK_MODEL_REPOSITORY")
    return Path(given).resolve() if given else make_model_repo(tmp_path)


def test_soak_mixed_load_no_errors_no_drops_flat_memory(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    settings = SoakSettings.from_env()
    env = {**os.environ, "PROVIDERS": "CPUExecutionProvider"}
    env["ADMIN_LOOPBACK"] = "true"  # the index is read straight from 127.0.0.1, no token
    with logged_server(repository(tmp_path), env, tmp_path / "server.log") as server:
        documented = documented_operations(httpx.get(f"{server.url}/openapi.json").json())
        result = soak(settings, server.rest_port, server.grpc_port, server.process.pid)
    result["server_exit"] = server.exit_status
    result["server_tracebacks"] = server.log.count("Traceback")
    record_property("result", json.dumps(result))
    failed = f"{json.dumps(result)}\n{server.log[-4000:]}"
    assert result["requests"] > 0
    assert result["server_errors"] == 0 and result["dropped_connections"] == 0, failed
    assert result["server_tracebacks"] == 0 and result["server_exit"] == 0, failed
    assert result["rss_growth"] <= settings.max_rss_growth, failed
    assert len(result["by_endpoint"]) == result["endpoints_in_mix"], "an endpoint never reached"
    # Every REST call of the mix is a documented operation (the document, not a typed count).
    assert set(result["operations_in_mix"]) - documented == {GRPC_INFER}
