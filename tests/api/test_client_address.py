"""The client's address behind proxies: X-Forwarded-For only from TRUSTED_PROXIES, the same answer
uvicorn's ProxyHeadersMiddleware gives REST's ``request.client`` with the options it is given."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.__main__ import uvicorn_options
from service.api.client_address import caller, client_host
from tests.support.apps import make_settings

PROXIES = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8")]
POOL = ["127.0.0.1", "127.0.0.2", "10.1.2.3", "10.9.9.9", "203.0.113.9", "198.51.100.1", "::1"]


def test_forwarded_for_counts_from_trusted_proxies_only() -> None:
    xff = ["203.0.113.9, 10.1.2.3"]
    assert client_host("127.0.0.1", xff, PROXIES) == "203.0.113.9"
    assert client_host("198.51.100.1", xff, PROXIES) == "198.51.100.1"  # not a proxy of ours
    assert client_host("127.0.0.1", xff, []) == "127.0.0.1"  # TRUSTED_PROXIES empty
    assert client_host("127.0.0.1", ["10.1.2.3", "10.9.9.9"], PROXIES) == "10.1.2.3"  # all ours
    assert client_host("127.0.0.1", ["203.0.113.9:5555"], PROXIES) == "203.0.113.9"
    assert client_host("::ffff:127.0.0.1", xff, PROXIES) == "203.0.113.9"  # dual-stack socket


def test_any_forwarding_header_marks_the_request_forwarded() -> None:
    for name in ("Forwarded", "x-forwarded-for", "X-Real-IP"):
        assert caller("127.0.0.1", [(name, "for=1.2.3.4")], []).forwarded, name
    plain = caller("127.0.0.1", [("authorization", "Bearer x"), ("x-bin", b"\0")], PROXIES)
    assert not plain.forwarded and plain.client == "127.0.0.1"


def test_uvicorn_honours_no_proxy_headers_unless_told() -> None:
    options = uvicorn_options(make_settings(Path("models")))
    assert options["proxy_headers"] is False and options["forwarded_allow_ips"] == []
    trusting = make_settings(Path("models"), trusted_proxies="127.0.0.1, 10.0.0.0/8")
    options = uvicorn_options(trusting)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == ["127.0.0.1/32", "10.0.0.0/8"]


def _uvicorn_client(peer: str, forwarded_for: list[str]) -> str | None:
    """The client uvicorn's own middleware puts into the scope, with our uvicorn options."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]

    options = uvicorn_options(make_settings(Path("models"), trusted_proxies=PROXIES))
    middleware = ProxyHeadersMiddleware(app, trusted_hosts=options["forwarded_allow_ips"])
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded_for]
    scope = {"type": "http", "client": (peer, 1234), "headers": headers}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    host: str | None = seen["client"][0]
    return host


@given(
    peer=st.sampled_from(POOL),
    forwarded_for=st.lists(
        st.lists(st.sampled_from(POOL), min_size=1, max_size=4).map(", ".join), max_size=2
    ),
)
def test_the_client_is_the_one_uvicorn_finds(peer: str, forwarded_for: list[str]) -> None:
    assert client_host(peer, forwarded_for, PROXIES) == _uvicorn_client(peer, forwarded_for)
