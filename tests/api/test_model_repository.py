"""The repository extension over HTTP (index, load, unload): the admin token, ADMIN_LOOPBACK's
local clients, forwarded and cross-site requests, from loopback and from elsewhere (the client
address is set on the ASGI transport; nothing is sent over a network), and versioned URLs under a
version policy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.api.rest.app import create_app
from tests.support.apps import make_settings
from tests.support.live_updates import favouring_graph, top1, write_version_atomically
from tests.support.models import make_model_repo, tiny_reference

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.1", 5000)
ELSEWHERE = ("10.1.2.3", 1234)
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPOSITORY_URLS = (
    "/v2/repository/index",
    "/v2/repository/models/tiny/unload",
    "/v2/repository/models/tiny/load",
)
IMAGES = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
INFER_BODY = {
    "inputs": [
        {
            "name": "images",
            "shape": list(IMAGES.shape),
            "datatype": "UINT8",
            "data": IMAGES.ravel().tolist(),
        }
    ]
}

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client_for(tmp_path: Path) -> Client:
    """``client_for(client=(host, port), headers={...}, **settings)``: an app over tiny v1, v2
    (and a broken ``broken`` v1) with ADMIN_TOKEN=TOKEN unless told otherwise, talked to as if
    from ``host`` with ``headers`` on every request (default: the token)."""
    repo = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    (repo / "broken").mkdir()
    write_version_atomically(repo, "broken", 1, b"not a graph", "0" * 64)

    @asynccontextmanager
    async def build(
        client: tuple[str, int] = LOOPBACK, headers: dict[str, str] | None = None, **changes: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(repo, poll_interval_s=0, **{"admin_token": TOKEN, **changes})
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://localhost",
                headers=AUTH if headers is None else headers,
            ) as http:
                yield http

    return build


@pytest.mark.parametrize(
    ("token", "loopback", "client", "headers", "status"),
    [
        # No token configured: refused, from loopback too (a proxy on the host is loopback).
        (None, False, LOOPBACK, {}, 403),
        (None, False, ("::1", 5000), {}, 403),
        (None, False, ELSEWHERE, {"Authorization": "Bearer anything"}, 403),
        # ADMIN_LOOPBACK: direct clients at 127.0.0.1 or ::1 exactly, nothing forwarded.
        (None, True, LOOPBACK, {}, 200),
        (None, True, ("::1", 5000), {}, 200),
        (None, True, ("::ffff:127.0.0.1", 5000), {}, 200),  # 127.0.0.1 on a dual-stack socket
        (None, True, ("127.0.0.2", 5000), {}, 403),  # another local service or proxy
        (None, True, ELSEWHERE, {}, 403),
        (None, True, LOOPBACK, {"X-Forwarded-For": "10.1.2.3"}, 403),
        (None, True, LOOPBACK, {"X-Forwarded-For": "127.0.0.1"}, 403),  # forwarded never counts
        (None, True, LOOPBACK, {"Forwarded": "for=127.0.0.1"}, 403),
        (None, True, LOOPBACK, {"X-Real-IP": "127.0.0.1"}, 403),
        # The token, from anywhere (forwarded or not); without it 401, a wrong one 403.
        (TOKEN, False, LOOPBACK, {}, 401),
        (TOKEN, False, ELSEWHERE, {}, 401),
        (TOKEN, False, ELSEWHERE, {"Authorization": "Bearer wrong"}, 403),
        (TOKEN, False, ELSEWHERE, {"Authorization": f"Basic {TOKEN}"}, 401),
        (TOKEN, False, ELSEWHERE, AUTH, 200),
        (TOKEN, False, LOOPBACK, {"Authorization": f"bearer {TOKEN}"}, 200),
        (TOKEN, False, LOOPBACK, {**AUTH, "X-Forwarded-For": "203.0.113.9"}, 200),
        (TOKEN, True, LOOPBACK, {}, 200),  # ADMIN_LOOPBACK admits local clients beside the token
        (TOKEN, True, ELSEWHERE, {}, 401),
    ],
)
async def test_repository_api_needs_the_token_or_a_direct_local_client_under_admin_loopback(
    client_for: Client,
    token: str | None,
    loopback: bool,
    client: tuple[str, int],
    headers: dict[str, str],
    status: int,
) -> None:
    async with client_for(
        client=client, headers=headers, admin_token=token, admin_loopback=loopback
    ) as http:
        for url in REPOSITORY_URLS:
            response = await http.post(url)
            assert response.status_code == status, (url, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
            if status != 200:
                assert "error" in response.json()
            if status == 403 and token is None:
                assert "ADMIN_TOKEN" in response.json()["error"]  # names the setting
        # Inference needs no token, from anywhere.
        assert (await http.post("/v2/models/tiny/infer", json=INFER_BODY)).status_code == 200


async def test_a_trusted_proxy_names_the_client_but_forwarded_requests_are_never_local(
    client_for: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """From TRUSTED_PROXIES, X-Forwarded-For gives the client's address (in the decision's log
    line); from anyone else it is ignored. Either way a forwarded request is not local."""
    caplog.set_level(logging.INFO, logger="service.api.admin")
    forwarded = {"X-Forwarded-For": "203.0.113.9, 10.0.0.7"}  # the client, then an inner proxy
    for proxies, client in (
        (["127.0.0.1", "10.0.0.0/8"], "203.0.113.9"),
        ([], "127.0.0.1"),  # an untrusted peer's header names nobody
    ):
        caplog.clear()
        async with client_for(
            headers=forwarded, admin_token=None, admin_loopback=True, trusted_proxies=proxies
        ) as http:
            response = await http.post("/v2/repository/index")
        assert response.status_code == 403, response.text
        (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert line.startswith(f"POST /v2/repository/index refused for client '{client}'")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://localhost:8000"}, 403),  # another port is another origin
        ({"Origin": "null"}, 403),  # sandboxed frames, file: pages
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),  # a sibling subdomain is not this server
        ({"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),  # typed into the address bar
        ({}, 200),  # curl, tritonclient: not a browser
    ],
)
async def test_cross_site_browser_requests_are_refused(
    client_for: Client, headers: dict[str, str], status: int
) -> None:
    async with client_for(headers={**AUTH, **headers}) as http:
        for url in REPOSITORY_URLS:
            response = await http.post(url)
            assert response.status_code == status, (url, response.text)
            if status == 403:
                assert "cross-" in response.json()["error"]


async def test_a_cross_site_form_cannot_unload_a_model_from_a_local_browser(
    client_for: Client,
) -> None:
    """What a page on any site can make the browser send to localhost under ADMIN_LOOPBACK."""
    form = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": "https://evil.example",
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "navigate",
    }
    async with client_for(headers={}, admin_token=None, admin_loopback=True) as http:
        response = await http.post("/v2/repository/models/tiny/unload", headers=form, content=b"")
        assert response.status_code == 403
        assert (await http.get("/v2/models/tiny/ready")).status_code == 200
        # Without Sec-Fetch-Site (older browsers) the Origin alone is enough.
        del form["Sec-Fetch-Site"]
        response = await http.post("/v2/repository/models/tiny/unload", headers=form, content=b"")
        assert response.status_code == 403
        assert (await http.get("/v2/models/tiny/ready")).status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("attacker.example:8000", 403),  # a page's own name, re-pointed at 127.0.0.1
        ("attacker.example", 403),
        ("localhost.attacker.example", 403),
        ("localhost:8000", 200),
        ("LOCALHOST", 200),
        ("app.localhost:8000", 200),  # browsers resolve names under localhost themselves
        ("127.0.0.1:8000", 200),
        ("127.0.1.1", 200),
        ("[::1]:8000", 200),
        ("0.0.0.0:8000", 200),  # uvicorn's banner for HOST=0.0.0.0: no page is served from it
    ],
)
async def test_admin_loopback_admits_only_requests_addressed_to_the_loopback(
    client_for: Client, host: str, status: int
) -> None:
    """DNS rebinding: once ``attacker.example`` resolves to 127.0.0.1, the attacker's page is
    same-origin with the server it reaches there (its Origin matches its Host), from a direct
    loopback peer; only the Host tells the page's name from a local one (a server on HOST
    0.0.0.0 accepts every Host)."""
    page = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"} if host else {}
    async with client_for(
        headers={}, admin_token=None, admin_loopback=True, host="0.0.0.0"
    ) as http:
        for url in REPOSITORY_URLS:
            response = await http.post(url, headers={"Host": host, **page})
            assert response.status_code == status, (url, response.text)
            if status == 403:
                assert "localhost" in response.json()["error"]


async def test_index_lists_every_version_with_state_and_reason(client_for: Client) -> None:
    async with client_for() as http:
        rows = (await http.post("/v2/repository/index")).json()  # empty body, as tritonclient
        assert rows == [
            {
                "name": "broken",
                "version": "1",
                "state": "UNAVAILABLE",
                "reason": rows[0]["reason"],
            },
            {"name": "tiny", "version": "1", "state": "UNLOADED", "reason": ""},
            {"name": "tiny", "version": "2", "state": "READY", "reason": ""},
        ]
        assert "sha256 of model.onnx" in rows[0]["reason"]
        ready = (await http.post("/v2/repository/index", json={"ready": True})).json()
        assert [(r["name"], r["version"]) for r in ready] == [("tiny", "2")]
        bad = await http.post("/v2/repository/index", json={"ready": "yes"})
        assert bad.status_code == 400 and "ready" in bad.json()["error"]
        assert "model_repository" in (await http.get("/v2")).json()["extensions"]


async def test_unload_then_load_over_http(client_for: Client) -> None:
    async with client_for(admin_token=TOKEN) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        unload = await http.post(
            "/v2/repository/models/tiny/unload",
            json={"parameters": {"unload_dependents": False}},
            headers=auth,
        )
        assert unload.status_code == 200 and unload.json() == {}
        infer = await http.post("/v2/models/tiny/infer", json=INFER_BODY)
        assert infer.status_code == 404 and "unloaded" in infer.json()["error"]
        assert (await http.get("/v2/models/tiny/ready")).status_code == 404
        assert (await http.get("/v2/health/ready")).status_code == 503  # nothing else is ready
        load = await http.post("/v2/repository/models/tiny/load", json={}, headers=auth)
        assert load.status_code == 200 and load.json() == {}
        infer = await http.post("/v2/models/tiny/infer", json=INFER_BODY)
        assert infer.status_code == 200 and infer.json()["model_version"] == "2"


async def test_load_errors(client_for: Client) -> None:
    async with client_for() as http:
        failed = await http.post("/v2/repository/models/broken/load")
        assert failed.status_code == 400
        assert "no version of model 'broken' could be loaded" in failed.json()["error"]
        assert "sha256" in failed.json()["error"]
        missing = await http.post("/v2/repository/models/nope/load")
        assert missing.status_code == 404
        assert (await http.post("/v2/repository/models/nope/unload")).status_code == 404
        override = await http.post(
            "/v2/repository/models/tiny/load", json={"parameters": {"config": '{"x": 1}'}}
        )
        assert override.status_code == 400 and "load failed" in override.json()["error"]
        files = await http.post(
            "/v2/repository/models/tiny/load", json={"parameters": {"file:1/model.onnx": "AA=="}}
        )
        assert files.status_code == 400 and "not supported" in files.json()["error"]
        for body in (b"[1]", b"{", b'{"parameters": 3}'):
            bad = await http.post("/v2/repository/models/tiny/load", content=body)
            assert bad.status_code == 400, body


async def test_every_served_version_has_its_urls_and_unversioned_goes_to_the_highest(
    client_for: Client, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    write_version_atomically(repo, "tiny", 3, favouring_graph(4).SerializeToString())
    async with client_for(version_policy="latest:2") as http:
        meta = (await http.get("/v2/models/tiny")).json()
        assert meta["versions"] == ["2", "3"]
        answer = (await http.post("/v2/models/tiny/infer", json=INFER_BODY)).json()
        assert answer["model_version"] == "3"
        assert top1(answer["outputs"][1]["data"]) == [4, 4]
        answer = (await http.post("/v2/models/tiny/versions/2/infer", json=INFER_BODY)).json()
        assert answer["model_version"] == "2"
        np.testing.assert_allclose(
            np.reshape(answer["outputs"][1]["data"], (2, 10)), tiny_reference(IMAGES), atol=1e-5
        )
        assert (await http.get("/v2/models/tiny/versions/2/ready")).status_code == 200
        assert (await http.get("/v2/models/tiny/versions/2")).status_code == 200
        not_served = await http.post("/v2/models/tiny/versions/1/infer", json=INFER_BODY)
        assert not_served.status_code == 404 and "not served" in not_served.json()["error"]
