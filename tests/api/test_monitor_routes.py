"""The monitor routes on the tiny models (in-process app, the SQLite log): 503 with the log off,
404 for unknown models and versions, 422 for bad windows, "no reference" rather than a failure
for cards without one, and a flood of calls answered by one database query."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.api.rest.app import create_app
from service.core.errors import Overloaded, RecordNotFound
from service.dataplane.dataplane import DataPlane
from service.dataplane.feedback import Feedback
from service.dataplane.quality_monitor import REFRESH_SHARE, QueryBudget, refresh_pause
from tests.support.apps import app_client, make_settings
from tests.support.models import make_model_repo

pytestmark = pytest.mark.anyio
V2_BODY = {"inputs": [{"name": "images", "shape": [2, 32, 32, 3], "datatype": "UINT8",
                       "data": [7] * 6144}]}  # fmt: skip


@pytest.fixture
async def logged(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, DataPlane]]:
    """An app with the prediction log on, and its data plane (to flush the log's queue)."""
    settings = make_settings(
        make_model_repo(tmp_path),
        prediction_log=True,
        data_dir=tmp_path / "data",
        monitor_refresh_s=0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, app.state.dataplane


async def test_the_monitor_needs_the_prediction_log(tmp_path: Path) -> None:
    settings = make_settings(make_model_repo(tmp_path), prediction_log=False)
    async with app_client(settings) as http:
        response = await http.get("/v1/models/tiny/monitor")
    assert response.status_code == 503
    assert "PREDICTION_LOG=true" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    ["/v1/models/nope/monitor", "/v1/models/tiny/versions/9/monitor",
     "/v1/models/nope/versions/1/monitor"],
)  # fmt: skip
async def test_unknown_models_and_versions_are_404(
    logged: tuple[httpx.AsyncClient, DataPlane], path: str
) -> None:
    http, _ = logged
    assert (await http.get(path)).status_code == 404


@pytest.mark.parametrize("window", ["0", "-5", "2592001", "abc", "nan", "inf"])
async def test_bad_windows_are_422(
    logged: tuple[httpx.AsyncClient, DataPlane], window: str
) -> None:
    http, _ = logged
    response = await http.get("/v1/models/tiny/monitor", params={"window_s": window})
    assert response.status_code == 422, response.text
    assert "window_s" in response.json()["error"]


async def test_a_card_without_a_reference_counts_but_has_no_drift(
    logged: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    http, plane = logged
    assert (await http.post("/v2/models/tiny/infer", json=V2_BODY)).status_code == 200
    assert plane.prediction_log is not None and plane.prediction_log.flush(5)
    served = (await http.get("/v1/models/tiny/monitor", params={"window_s": 60})).json()
    assert (served["version"], served["predictions"], served["window_s"]) == (2, 2, 60)
    assert sum(served["predicted_classes"]["counts"]) == 2
    assert served["predicted_classes"]["reference"] is None
    assert served["top1_probability"]["reference"] is None
    assert served["drift"]["score"] is None and served["drift"]["drifting"] is False
    assert served["labelled"]["n"] == 0 and served["labelled"]["interval"] == [0.0, 1.0]
    assert served["drift"]["noise_floor"] == 0.0  # nothing to sample from
    assert served["calibration"] is None and served["labelled"]["card_accuracy"] == 0.1
    one = await http.get("/v1/models/tiny/versions/1/monitor")  # on disk, not served (policy)
    assert one.status_code == 404 and "not served" in one.json()["error"]
    default = (await http.get("/v1/models/tiny/versions/2/monitor")).json()
    assert default["window_s"] == plane.settings.monitor_window_s
    assert default["until"] - default["since"] == pytest.approx(default["window_s"])


async def test_a_flood_of_monitor_calls_costs_one_query(
    logged: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    http, plane = logged
    assert (await http.post("/v2/models/tiny/infer", json=V2_BODY)).status_code == 200
    assert plane.prediction_log is not None and plane.prediction_log.flush(5)
    queries: list[str] = []

    def count(*args: Any) -> None:
        statement = args[2]
        if "GROUP BY" in statement:
            queries.append(statement)

    sa.event.listen(plane.prediction_log.engine, "before_cursor_execute", count)
    calls = [http.get("/v1/models/tiny/monitor", params={"window_s": 600}) for _ in range(50)]
    answers = await asyncio.gather(*calls)
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1
    assert len(queries) == 2  # one answer: all records by class and bin, labelled ones by label


async def test_a_flood_of_distinct_windows_is_bounded_not_queued(
    logged: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    http, _ = logged
    calls = [http.get("/v1/models/tiny/monitor", params={"window_s": 60 + w}) for w in range(60)]
    answers = await asyncio.gather(*calls)
    assert {a.status_code for a in answers} <= {200, 503}
    busy = [a.json()["error"] for a in answers if a.status_code == 503]
    assert all("monitor is computing too many answers" in e for e in busy)


async def test_new_windows_past_the_query_budget_are_503_while_cached_ones_are_answered(
    logged: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    """A client choosing a new window each call bought a query each (0.8 s at the log's cap);
    past the budget a new window waits, a window already answered does not, nor the gauges."""
    http, plane = logged
    assert (await http.post("/v2/models/tiny/infer", json=V2_BODY)).status_code == 200
    assert plane.prediction_log is not None and plane.prediction_log.flush(5)
    plane.monitor.budget = QueryBudget(share=1e-6, burst_s=0.0)  # one query, then a long wait
    first = await http.get("/v1/models/tiny/monitor", params={"window_s": 60})
    assert first.status_code == 200
    new = await http.get("/v1/models/tiny/monitor", params={"window_s": 61})
    assert new.status_code == 503 and new.headers["retry-after"]
    assert "queries have taken their share of the machine" in new.json()["error"]
    again = await http.get("/v1/models/tiny/monitor", params={"window_s": 60})
    assert again.status_code == 200 and again.json() == first.json()
    card = plane.model("tiny").card
    refreshed = await plane.monitor.report("tiny", 2, card, 62, budgeted=False)
    assert refreshed.window_s == 62 and plane.monitor.budget.wait_s() > 0


def test_the_query_budget_lets_a_burst_through_then_its_share() -> None:
    now = [0.0]
    budget = QueryBudget(share=0.25, burst_s=2.0, clock=lambda: now[0])
    assert budget.wait_s() == 0
    budget.spend(3.0)  # one query over the burst: the next waits for the excess to drain
    assert budget.wait_s() == pytest.approx(4.0)  # (3 - 2) / 0.25
    now[0] = 2.0
    assert budget.wait_s() == pytest.approx(2.0)
    now[0] = 4.0
    assert budget.wait_s() == 0
    now[0] = 100.0  # a long quiet spell owes nothing, and earns no more than the burst
    budget.spend(2.0)
    assert budget.wait_s() == 0
    budget.spend(0.5)
    assert budget.wait_s() == pytest.approx(2.0)


async def test_feedback_runs_on_the_monitors_bounded_pool_not_the_default_executor(
    logged: tuple[httpx.AsyncClient, DataPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feedback call may wait 2 s for queued records; on the loop's default executor (6
    threads here) a flood of them held up the repository's polls and the workers' state."""
    _, plane = logged
    threads: list[str] = []

    def slow_lookup(*args: Any) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.2)
        raise RecordNotFound("none")

    assert plane.prediction_log is not None
    monkeypatch.setattr(plane.prediction_log, "queued", slow_lookup)  # feedback's first lookup
    calls = [plane.feedback([Feedback("x", 0)], "admin") for _ in range(20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 20 - 10  # 2 threads and 8 waiting: the monitor's pool
    assert all("prediction log is busy" in r.message for r in refused)
    assert len(threads) == 10 and not any(t.startswith("asyncio") for t in threads)


async def test_the_openapi_document_describes_the_monitor(
    logged: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    http, _ = logged
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path in ("/v1/models/{name}/monitor", "/v1/models/{name}/versions/{version}/monitor"):
        ok = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/MonitorResponse"}


def test_the_gauges_refresh_pauses_longer_after_a_slow_refresh() -> None:
    """The refresh reads the whole window: a slow one (a big log) stretches the pause so that
    refreshing stays under REFRESH_SHARE of the time; a quick one keeps MONITOR_REFRESH_S."""
    assert refresh_pause(15.0, 0.01) == 15.0
    slow = refresh_pause(15.0, 0.8)  # 0.8 s: a 1,000,000-record window on SQLite
    assert slow > 15.0
    assert 0.8 / (0.8 + slow) == pytest.approx(REFRESH_SHARE)


async def test_past_the_budget_a_window_answered_within_a_minute_is_answered_as_it_was(
    logged: tuple[httpx.AsyncClient, DataPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dashboard sharing the server with a client that spends the budget on new windows got
    503 for its own windows as soon as their 1 s cache ran out."""
    http, plane = logged
    assert (await http.post("/v2/models/tiny/infer", json=V2_BODY)).status_code == 200
    assert plane.prediction_log is not None and plane.prediction_log.flush(5)
    monkeypatch.setattr("service.dataplane.quality_monitor.CACHE_S", 0.0)  # never fresh
    first = await http.get("/v1/models/tiny/monitor", params={"window_s": 60})
    assert first.status_code == 200
    predictions = first.json()["predictions"]
    plane.monitor.budget = QueryBudget(share=1e-6, burst_s=0.0)
    plane.monitor.budget.spend(1.0)  # spent by another client's windows
    assert (await http.post("/v2/models/tiny/infer", json=V2_BODY)).status_code == 200
    assert plane.prediction_log.flush(5)
    kept = await http.get("/v1/models/tiny/monitor", params={"window_s": 60})
    assert kept.status_code == 200 and kept.json() == first.json()  # as it was
    assert kept.json()["predictions"] == predictions  # not the second request's
    assert (await http.get("/v1/models/tiny/monitor", params={"window_s": 61})).status_code == 503
    monkeypatch.setattr("service.dataplane.quality_monitor.STALE_S", 0.0)
    gone = await http.get("/v1/models/tiny/monitor", params={"window_s": 60})
    assert gone.status_code == 503 and "answered as it was then" in gone.json()["error"]
