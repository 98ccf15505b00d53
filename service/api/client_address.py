"""Who sent a request, for REST and gRPC alike: the peer's address, whether the request came
through a proxy (forwarding headers), and the client's address, which X-Forwarded-For gives only
when the peer is one of ``TRUSTED_PROXIES``. uvicorn gets the same list (``uvicorn_options``), so
REST's ``request.client`` and its logs agree with this."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A request carrying any of these came through a proxy (gRPC metadata keys are the same names).
FORWARDING_HEADERS = frozenset({"forwarded", "x-forwarded-for", "x-real-ip"})
MAX_HOPS = 32  # X-Forwarded-For entries looked at; a client can send any number


@dataclass(frozen=True)
class Caller:
    """``peer``: the connection's address (for REST, uvicorn's ``request.client``, which it
    rewrites only from a trusted proxy's X-Forwarded-For); ``forwarded``: the request carries
    forwarding headers; ``client``: the client's address as far as trusted proxies tell."""

    peer: str | None
    forwarded: bool
    client: str | None


def ip(host: str | None) -> Address | None:
    """``host`` as an IP address (IPv4-mapped IPv6 as IPv4), None if it is not one."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(host: str | None, proxies: Sequence[Network]) -> bool:
    address = ip(host)
    return address is not None and any(address in network for network in proxies)


def _host_of(entry: str) -> str:
    """An X-Forwarded-For entry without a port (``1.2.3.4:5``, ``[::1]:5``), as uvicorn reads it."""
    entry = entry.strip()
    if entry.startswith("[") and "]" in entry:
        return entry[1 : entry.index("]")]
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


def client_host(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]
) -> str | None:
    """uvicorn's rule: from a trusted peer, the last X-Forwarded-For entry that is not a trusted
    proxy (each proxy appends the address it saw), or the first when all are; otherwise the peer."""
    if not forwarded_for or not is_trusted(peer, proxies):
        return peer
    hosts = [_host_of(e) for e in ",".join(forwarded_for).split(",")[-MAX_HOPS:]]
    for host in reversed(hosts):
        if not is_trusted(host, proxies):
            return host or peer
    return hosts[0] or peer


def caller(
    peer: str | None, headers: Iterable[tuple[str, object]], proxies: Sequence[Network]
) -> Caller:
    """The ``Caller`` of a request from ``peer`` with ``headers`` (REST headers or gRPC metadata:
    lower-case names; values that are not text, such as gRPC's binary metadata, are passed over)."""
    forwarded = False
    forwarded_for: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key in FORWARDING_HEADERS:
            forwarded = True
            if key == "x-forwarded-for" and isinstance(value, str):
                forwarded_for.append(value)
    return Caller(peer, forwarded, client_host(peer, forwarded_for, proxies))
