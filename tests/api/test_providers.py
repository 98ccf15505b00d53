"""Execution providers an operator asked for and did not get (issue 15): the session lands on the
CPU with a WARNING, the provider in the model's metadata and gauges in /metrics; with
REQUIRE_PROVIDERS the version is UNAVAILABLE instead. Here onnxruntime is the CPU build, so asking
for CUDA first is exactly "PROVIDERS asks for CUDA and the session lands on the CPU"."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from service.engine.providers import provider_problem
from service.settings import Settings
from tests.support.apps import ADMIN_TOKEN, app_client
from tests.support.models import make_model_repo

pytestmark = pytest.mark.anyio
CUDA_FIRST = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_settings(repo: Path, **changes: object) -> Settings:
    """CPU unless told otherwise, with the admin token that ``app_client`` sends."""
    options: dict[str, object] = {
        "providers": ["CPUExecutionProvider"],
        "admin_token": ADMIN_TOKEN,
        **changes,
    }
    return Settings(model_repository=repo, **options)  # type: ignore[arg-type]


def _gauges(metrics: str, name: str) -> dict[str, float]:
    return {
        labels: float(value)
        for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", metrics, re.MULTILINE)
    }


async def test_cuda_asked_for_but_on_the_cpu_shows_in_metadata_metrics_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(make_model_repo(tmp_path, lecture=False), providers=CUDA_FIRST)
    with caplog.at_level(logging.WARNING, logger="service"):
        async with app_client(settings) as http:
            metadata = (await http.get("/v2/models/tiny")).json()
            metrics = (await http.get("/metrics")).text
            infer = await http.post(
                "/v2/models/tiny/infer",
                json={
                    "inputs": [
                        {
                            "name": "images",
                            "shape": [1, 32, 32, 3],
                            "datatype": "UINT8",
                            "data": [0] * 3072,
                        }
                    ]
                },
            )
    assert infer.status_code == 200, infer.text  # it still serves, on the CPU
    assert metadata["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
    providers = _gauges(metrics, "model_execution_provider")
    assert providers == {'model="tiny",provider="CPUExecutionProvider",version="2"': 1.0}
    assert _gauges(metrics, "model_provider_fallback") == {'model="tiny",version="2"': 1.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "CUDAExecutionProvider" in w and "not in this onnxruntime build" in w for w in warnings
    ), warnings


async def test_only_the_cpu_asked_for_is_no_fallback(tmp_path: Path) -> None:
    settings = make_settings(make_model_repo(tmp_path, lecture=False))  # CPU only
    async with app_client(settings) as http:
        metrics = (await http.get("/metrics")).text
    assert _gauges(metrics, "model_provider_fallback") == {'model="tiny",version="2"': 0.0}


async def test_require_providers_makes_a_cpu_session_unavailable_with_the_reason(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        make_model_repo(tmp_path, lecture=False), providers=CUDA_FIRST, require_providers=True
    )
    async with app_client(settings) as http:
        ready = await http.get("/v2/health/ready")
        model_ready = await http.get("/v2/models/tiny/versions/2/ready")
        index = (await http.post("/v2/repository/index", json={})).json()
        metrics = (await http.get("/metrics")).text
    assert ready.status_code == 503  # no model may serve, so the replica never turns ready
    assert model_ready.status_code != 200 or model_ready.json().get("ready") is False
    rows = {(row["name"], row["version"]): row for row in index}
    assert rows[("tiny", "2")]["state"] == "UNAVAILABLE"
    assert "REQUIRE_PROVIDERS" in rows[("tiny", "2")]["reason"]
    assert "CUDAExecutionProvider" in rows[("tiny", "2")]["reason"]
    assert _gauges(metrics, "model_execution_provider") == {}


def test_require_providers_and_providers_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUIRE_PROVIDERS", "true")
    monkeypatch.setenv("PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    settings = Settings()
    assert settings.require_providers is True and settings.providers == CUDA_FIRST
    monkeypatch.delenv("REQUIRE_PROVIDERS")
    assert Settings().require_providers is False


def test_provider_problem_names_what_is_missing() -> None:
    assert "not in this onnxruntime build" in provider_problem("CUDAExecutionProvider")
    assert "TensorrtExecutionProvider" in provider_problem("TensorrtExecutionProvider")
