"""``X-Request-ID`` on every response (fast path, FastAPI routes, errors, limits), carried in log
records as text or JSON lines; request bodies never reach the logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from service.api.rest import http_io
from service.core.logs import (
    MAX_ID_LENGTH,
    JsonFormatter,
    RequestIdFilter,
    new_request_id,
    usable_request_id,
)
from service.core.throttled_log import ThrottledLog

pytestmark = pytest.mark.anyio

GOOD = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                    "data": [0] * 3072}]}  # fmt: skip


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the root logger writes, as JSON lines, while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_every_kind_of_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    calls = [
        ("POST", "/v2/models/tiny/infer", {"json": GOOD}),  # the fast path, 200
        ("POST", "/v2/models/tiny/infer", {"content": b"{"}),  # 400
        ("POST", "/v2/models/nope/infer", {"json": GOOD}),  # 404
        ("POST", "/v2/models/tiny/infer", {"content": b"x" * 400_000}),  # 413
        ("GET", "/v2/health/ready", {}),
        ("GET", "/v1/models", {}),
        ("GET", "/no/such/endpoint", {}),  # 404 from routing
        ("DELETE", "/v2/health/live", {}),  # 405
        ("POST", "/v1/models/tiny:predict", {"content": b"[]"}),  # 400 via FastAPI
    ]
    seen = set()
    for method, url, extra in calls:
        response = await client.request(method, url, **extra)  # type: ignore[arg-type]
        request_id = response.headers.get("x-request-id")
        assert request_id, (method, url, response.status_code)
        seen.add(request_id)
    assert len(seen) == len(calls)  # a new one each time


async def test_a_usable_incoming_id_is_echoed_and_others_are_replaced(
    client: httpx.AsyncClient,
) -> None:
    for given in ("abc-123", "trace:00f0.7", "x" * MAX_ID_LENGTH):
        for url in ("/v2/models/tiny/infer", "/v2/models/nope/infer"):
            response = await client.post(url, json=GOOD, headers={"X-Request-ID": given})
            assert response.headers["x-request-id"] == given
    for hostile in ("two words", "x" * (MAX_ID_LENGTH + 1), 'quote"d', "tab\tbed"):
        response = await client.get("/v2/health/live", headers={"X-Request-ID": hostile})
        assert response.headers["x-request-id"] not in ("", hostile)


def test_request_ids_are_unique_and_hostile_ones_unusable() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert usable_request_id(b"ok-1") == "ok-1"
    for bad in (b"", b"a b", b"\xff\xfe", b"line\nbreak", b"x" * 129):
        assert usable_request_id(bad) is None


async def test_log_records_carry_the_request_id_and_never_the_body(
    client: httpx.AsyncClient, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything down to DEBUG is captured while requests with a marker in their bodies are
    served (answered, refused, failed); a 5xx is logged and its line names the request (a
    throttle of its own: an earlier test's 503 within the interval would hold the line back)."""
    monkeypatch.setattr(http_io, "_serving_error_log", ThrottledLog(http_io.log))
    marker = "BODY-MARKER-5d1c"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        for content in (
            json.dumps({**GOOD, "id": marker}).encode(),
            json.dumps({"inputs": [{"name": marker}]}).encode(),
            marker.encode(),
        ):
            await client.post("/v2/models/tiny/infer", content=content)
            await client.post("/v1/models/tiny:predict", content=content)
        for name in ("tiny", "cifar10_cnn"):
            await client.post(f"/v2/repository/models/{name}/unload")
        response = await client.get("/v2/health/ready", headers={"X-Request-ID": "req-under-test"})
        assert response.status_code == 503
    finally:
        root.setLevel(level)
    logging.getLogger("service.test").warning("a line written inside no request")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert all(set(line) >= {"time", "level", "logger", "request_id", "message"} for line in lines)
    (ready,) = [line for line in lines if line["request_id"] == "req-under-test"]
    assert ready["level"] == "WARNING" and "no model is ready" in ready["message"]
    assert lines[-1]["request_id"] == "-"
    assert marker not in json_log.getvalue()
