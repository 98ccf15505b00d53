"""Statistics and model configuration in process: the config is the batcher's real settings, the
unbatched path is counted too, the server's default timeout applies, the settings are checked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from service.api.rest.app import create_app
from service.core.errors import InvalidConfig
from service.dataplane.dataplane import DataPlane
from service.settings import Settings
from tests.support.apps import make_settings
from tests.support.models import make_model_repo
from tests.support.slow_models import write_slow_model

pytestmark = pytest.mark.anyio
BODY = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 32, 32, 3],
                    "data": [7] * 6144}]}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, DataPlane]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, app.state.dataplane


async def test_config_is_what_the_batcher_really_runs_with(tmp_path: Path) -> None:
    settings = make_settings(
        make_model_repo(tmp_path, {"tiny": [1]}, lecture=False),
        max_batch_size=16,
        max_batch_delay_ms=1.5,
        max_queue_images=300,
        request_timeout_us=250_000,
    )
    async with served(settings) as (http, plane):
        assert (await http.post("/v2/models/tiny/infer", json=BODY)).status_code == 200
        batcher = plane.model("tiny")._batcher
        assert batcher is not None
        config = (await http.get("/v2/models/tiny/config")).json()
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [batcher.max_batch_size]
    assert batching["max_queue_delay_microseconds"] == batcher.max_batch_delay_s * 1e6
    assert batching["default_queue_policy"]["max_queue_size"] == batcher.max_queue_rows
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 250_000
    assert config["max_batch_size"] == settings.max_images_per_request


async def test_without_dynamic_batching_the_config_says_so_and_runs_are_counted(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        make_model_repo(tmp_path, {"tiny": [1]}, lecture=False), dynamic_batching=False
    )
    async with served(settings) as (http, _):
        for _ in range(3):
            assert (await http.post("/v2/models/tiny/infer", json=BODY)).status_code == 200
        config = (await http.get("/v2/models/tiny/config")).json()
        (stats,) = (await http.get("/v2/models/tiny/stats")).json()["model_stats"]
    assert "dynamic_batching" not in config
    assert stats["inference_stats"]["success"]["count"] == 3
    assert stats["inference_count"] == 6 and stats["execution_count"] == 3
    assert stats["batch_stats"][0]["batch_size"] == 2


async def test_the_server_default_timeout_applies_to_requests_without_one(
    tmp_path: Path,
) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    write_slow_model(repo, "slow", products=24)
    settings = make_settings(repo, request_timeout_us=50_000, intra_op_threads=1)
    async with served(settings) as (http, plane):
        slow = plane.model("slow")
        body = {**BODY, "parameters": {"timeout": 0}}  # 0: the server's default
        first = asyncio.ensure_future(
            http.post("/v2/models/slow/infer", json={**BODY, "parameters": {"timeout": 10**7}})
        )
        while slow._batcher is None or slow._batcher.queued_rows:  # until the first one runs
            await asyncio.sleep(0.005)
        second = await http.post("/v2/models/slow/infer", json=body)
        assert (await first).status_code == 200
    assert second.status_code == 503 and "Request timeout expired" in second.json()["error"]


def test_a_bad_response_cache_setting_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="RESPONSE_CACHE"):
        create_app(make_settings(tmp_path, response_cache="tiny=lots"))
