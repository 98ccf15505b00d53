"""The Host header allow-list (``ALLOWED_HOSTS``): a server on loopback answers only its own
names, so a web page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) cannot read or drive
it from the user's browser. Outermost but for the request id, so the v2 fast path is covered."""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.client_address import ip
from service.api.rest.http_io import serving_error_response
from service.core.errors import HostNotAllowed
from service.settings import Settings

LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")


def host_name(value: str) -> str:
    """A Host header's name without the port, lower-case; IPv6 addresses keep their brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.partition(":")[0]


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The names REST answers (None: any): ALLOWED_HOSTS, or for a server bound to a loopback
    address its local names and that address."""
    if settings.allowed_hosts:  # unset or empty: the default
        names = frozenset(host_name(h) for h in settings.allowed_hosts)
        return None if "*" in names else names
    address = ip(settings.host)
    if settings.host == "localhost" or (address is not None and address.is_loopback):
        bound = f"[{settings.host}]" if ":" in settings.host else settings.host
        return frozenset({*LOCAL_NAMES, host_name(bound)})
    return None


class AllowedHosts:
    """ASGI middleware: 400 for an HTTP request whose Host is not allowed (or missing)."""

    def __init__(self, app: ASGIApp, hosts: Collection[str]) -> None:
        self.app = app
        self.exact = frozenset(h for h in hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".example.com"

    def allows(self, name: str) -> bool:
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            if not self.allows(host_name(host)):
                error = HostNotAllowed(f"Host {host[:100]!r} is not served here (ALLOWED_HOSTS)")
                await serving_error_response(error, scope["method"], scope["path"])(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
