"""The repository extension over HTTP (index, load, unload) with and without the admin token, from
loopback and from elsewhere (the client address is set on the ASGI transport; nothing is sent
over a network), and versioned URLs under a version policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.api.app import create_app
from tests.api.conftest import make_settings
from tests.conftest import make_model_repo, tiny_reference
from tests.live_updates import favouring_graph, top1, write_version_atomically

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.1", 5000)
ELSEWHERE = ("10.1.2.3", 1234)
TOKEN = "s3cret-token"
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
    """``client_for(client=(host, port), **settings)``: an app over tiny v1, v2 (and a broken
    ``broken`` v1), talked to as if from ``host``."""
    repo = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    (repo / "broken").mkdir()
    write_version_atomically(repo, "broken", 1, b"not a graph", "0" * 64)

    @asynccontextmanager
    async def build(
        client: tuple[str, int] = LOOPBACK, **changes: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(make_settings(repo, poll_interval_s=0, **changes))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield http

    return build


@pytest.mark.parametrize(
    ("token", "client", "authorization", "status"),
    [
        (None, LOOPBACK, None, 200),
        (None, ("::1", 5000), None, 200),
        (None, ELSEWHERE, None, 403),
        (None, ELSEWHERE, f"Bearer {TOKEN}", 403),  # no token configured: loopback only
        (TOKEN, LOOPBACK, None, 401),
        (TOKEN, ELSEWHERE, None, 401),
        (TOKEN, ELSEWHERE, "Bearer wrong", 403),
        (TOKEN, ELSEWHERE, f"Basic {TOKEN}", 401),
        (TOKEN, ELSEWHERE, f"Bearer {TOKEN}", 200),
        (TOKEN, LOOPBACK, f"bearer {TOKEN}", 200),
    ],
)
async def test_repository_api_needs_the_token_or_loopback(
    client_for: Client,
    token: str | None,
    client: tuple[str, int],
    authorization: str | None,
    status: int,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with client_for(client=client, admin_token=token) as http:
        for url in (
            "/v2/repository/index",
            "/v2/repository/models/tiny/unload",
            "/v2/repository/models/tiny/load",
        ):
            response = await http.post(url, headers=headers)
            assert response.status_code == status, (url, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
            if status != 200:
                assert "error" in response.json()
        # Inference needs no token, from anywhere.
        assert (await http.post("/v2/models/tiny/infer", json=INFER_BODY)).status_code == 200


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
            "/v2/repository/models/tiny/load", json={"parameters": {"config": "{}"}}
        )
        assert override.status_code == 400 and "not supported" in override.json()["error"]
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
