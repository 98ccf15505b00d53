"""Who may use the model repository API, for REST and gRPC alike: the bearer token when
``ADMIN_TOKEN`` is set, loopback clients only when it is not; and which load parameters it takes."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from service.api.state import State
from service.core.errors import Forbidden, InvalidInput, Unauthorized


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_admin(token: SecretStr | None, host: str | None, authorization: str) -> None:
    """The repository API's rule: 401 without the bearer token, 403 with a wrong one or,
    tokenless, from off the host (``host``: the client's IP address)."""
    if token is None:
        if not is_loopback(host):
            raise Forbidden(
                "the repository API answers loopback clients only unless ADMIN_TOKEN is set"
            )
        return
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the repository API needs 'Authorization: Bearer <ADMIN_TOKEN>'")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Forbidden("wrong bearer token for the repository API")


def check_load_parameters(names: Iterable[str]) -> None:
    """Load's ``config`` and ``file:`` overrides are refused: versions come from the repository."""
    overrides = sorted(k for k in names if k == "config" or str(k).startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"parameters {overrides} are not supported: publish the version into the repository"
        )


# Documents the bearer scheme in OpenAPI (so clients and fuzzers know of it); ``check_admin``
# reads the header itself, as gRPC's metadata is read.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="ADMIN_TOKEN, when set; without it the repository API answers loopback only.",
)


async def require_admin(
    request: Request, state: State, _: Annotated[Any, Security(BEARER)] = None
) -> None:
    """The REST routes' dependency: ``check_admin`` on the request (async: no thread hop)."""
    check_admin(
        state.settings.admin_token,
        request.client.host if request.client else None,
        request.headers.get("authorization", ""),
    )
