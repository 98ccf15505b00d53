"""ALLOWED_HOSTS: a server on loopback answers its own names only (DNS rebinding: a page whose
domain now resolves to 127.0.0.1 sends its own Host), on every path, the v2 fast path included."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from service.api.rest.allowed_hosts import allowed_hosts, host_name
from tests.support.apps import ADMIN, app_client, make_settings
from tests.support.models import make_model_repo

pytestmark = pytest.mark.anyio

BODY = {
    "inputs": [
        {
            "name": "images",
            "shape": [1, 32, 32, 3],
            "datatype": "UINT8",
            "data": np.zeros(3072, np.uint8).tolist(),
        }
    ]
}


async def statuses(http: httpx.AsyncClient, host: str) -> list[int]:
    """Statuses of a health check, v2 infer and the repository index sent with ``Host: host``."""
    headers = {"Host": host, **ADMIN}
    return [
        (await http.get("/v2/health/ready", headers=headers)).status_code,
        (await http.post("/v2/models/tiny/infer", json=BODY, headers=headers)).status_code,
        (await http.post("/v2/repository/index", headers=headers)).status_code,
    ]


async def test_a_loopback_server_answers_its_own_names_only(tmp_path: Path) -> None:
    settings = make_settings(make_model_repo(tmp_path, lecture=False))
    assert settings.host == "127.0.0.1"
    async with app_client(settings) as http:
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert await statuses(http, host) == [200, 200, 200], host
        for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.2"):
            assert await statuses(http, host) == [400, 400, 400], host
        response = await http.post("/v2/models/tiny/infer", json=BODY, headers={"Host": "x.test"})
        assert "ALLOWED_HOSTS" in response.json()["error"] and response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("changes", "allowed", "refused"),
    [
        (
            {"allowed_hosts": "api.example.org, *.svc.local"},
            ["api.example.org:443", "cifar.ns.svc.local"],
            ["localhost", "svc.local", "example.org"],
        ),
        ({"host": "0.0.0.0"}, ["anything.example", "10.0.0.5:8000"], []),  # compose, k8s
        ({"allowed_hosts": "*"}, ["anything.example"], []),
        ({"host": "127.0.0.2"}, ["127.0.0.2:8000", "localhost"], ["evil.example"]),
        ({"host": "::1"}, ["[::1]:8000", "localhost"], ["evil.example"]),
    ],
)
async def test_allowed_hosts_setting_and_defaults(
    tmp_path: Path, changes: dict[str, str], allowed: list[str], refused: list[str]
) -> None:
    settings = make_settings(make_model_repo(tmp_path, lecture=False), **changes)
    async with app_client(settings) as http:
        for host in allowed:
            assert await statuses(http, host) == [200, 200, 200], host
        for host in refused:
            assert await statuses(http, host) == [400, 400, 400], host


def test_host_names_and_the_default_list() -> None:
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == "[::1]"
    assert host_name("[::1]") == "[::1]"
    assert host_name("") == ""
    loopback = make_settings(Path("models"))
    assert allowed_hosts(loopback) == {"localhost", "127.0.0.1", "[::1]"}
    assert allowed_hosts(make_settings(Path("models"), host="0.0.0.0")) is None
    assert allowed_hosts(make_settings(Path("models"), host="::")) is None
