"""The short versions of ``make soak`` and ``make fuzz``: the same scripts against a real server
over the test repository, bounded to about 20 s and 8 examples per operation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import fuzz_api, soak
from service.api.rest.app import create_app
from service.settings import Settings
from tests.support.models import make_model_repo

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def documented_operations(repo: Path) -> int:
    """The operations the app's OpenAPI document lists (what schemathesis fuzzes)."""
    spec = create_app(Settings(model_repository=repo, providers=["CPUExecutionProvider"])).openapi()
    return sum(len(HTTP_METHODS & set(path)) for path in spec["paths"].values())


pytestmark = pytest.mark.slow  # about 20 s each: make test runs them, make test-fast does not


def test_short_soak_mixed_load_no_errors_no_drops_flat_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_model_repo(tmp_path)
    code = soak.main(
        ["--model-repository", str(repo), "--seconds", "20", "--warmup-s", "8",
         "--concurrency", "64"]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, result
    assert result["requests"] > 0
    assert result["server_errors"] == 0 and result["dropped_connections"] == 0
    assert result["rss_growth"] <= 0.10
    assert len(result["by_endpoint"]) == result["endpoints_in_mix"] >= 11  # every one reached
    assert result["server_exit"] == 0


def test_short_fuzz_no_5xx_and_responses_match_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_model_repo(tmp_path)
    code = fuzz_api.main(["--model-repository", str(repo), "--max-examples", "8", "--seed", "6"])
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0, captured.err[-3000:]
    assert result["operations"] == documented_operations(repo) and result["cases"] > 100
    assert result["failures"] == 0 and result["server_tracebacks"] == 0
