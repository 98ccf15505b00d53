"""Who may change what is served (the model repository API), for REST and gRPC alike: whoever
sends the bearer token (``ADMIN_TOKEN`` or ``ADMIN_TOKEN_FILE``); without a token configured,
nobody, unless ``ADMIN_LOOPBACK`` admits direct local clients. Addresses are not credentials: a
proxy on the host connects from loopback for everyone. Over REST, browsers' cross-site requests
are refused first (a form on any web page can POST to localhost)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import urllib.parse

from service.api.client_address import Caller, ip
from service.core.errors import Forbidden, ServingError, Unauthorized
from service.core.throttled_log import ThrottledLog
from service.settings import Settings

log = logging.getLogger(__name__)
# Refusals are what any client can cause: a line per client, call and reason per interval, with
# the count of the rest (28,736 refused calls had grown the log 5.4 MB from 2.1 MB sent).
_refusal_log = ThrottledLog(log)

# ADMIN_LOOPBACK's peers: these two addresses exactly, not the rest of 127.0.0.0/8 (where other
# local services and proxies may listen).
LOCAL_PEERS = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
SAME_SITE = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values of a non-cross-site call
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_local(who: Caller) -> bool:
    """A direct, unforwarded connection from 127.0.0.1 or ::1."""
    return not who.forwarded and ip(who.peer) in LOCAL_PEERS


def names_loopback(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, a name under
    it, 127.0.0.0/8, ::1 or 0.0.0.0, with any port): what a browser sends to a local server. A
    page whose own name was re-pointed at 127.0.0.1 (DNS rebinding) sends that name instead."""
    try:
        name = urllib.parse.urlsplit(f"//{host.strip()}").hostname
    except ValueError:
        return False
    if not name:
        return False
    address = ip(name)
    if address is not None:  # 0.0.0.0 too: what uvicorn's banner shows for HOST=0.0.0.0
        return address.is_loopback or address.is_unspecified
    name = name.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _admission(settings: Settings, who: Caller, authorization: str, host: str | None) -> str:
    """How the call is admitted ("token" or "loopback"); raises when it is not."""
    if settings.admin_loopback and is_local(who) and (host is None or names_loopback(host)):
        return "loopback"
    token = settings.admin_token
    if token is None:
        if settings.admin_loopback:
            raise Forbidden(
                "the repository API needs ADMIN_TOKEN here: ADMIN_LOOPBACK admits only direct "
                "clients at 127.0.0.1 or ::1 (no proxy, no forwarding headers) that address "
                "the server as localhost, 127.0.0.1 or [::1]"
            )
        raise Forbidden(
            "the repository API is off: set ADMIN_TOKEN (or ADMIN_TOKEN_FILE) on the server and "
            "send 'Authorization: Bearer <token>'"
        )
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the repository API needs 'Authorization: Bearer <ADMIN_TOKEN>'")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Forbidden("wrong bearer token for the repository API")
    return "token"


def check_admin(
    settings: Settings,
    who: Caller,
    authorization: str,
    what: str,
    host: str | None = None,
    kind: str | None = None,
) -> None:
    """The repository API's rule: 401 without the bearer token, 403 with a wrong one, 403
    without a token configured (bar ADMIN_LOOPBACK's local clients, over REST only where the
    request's ``host`` header names the loopback; gRPC, which no browser speaks, has None).
    Every admitted call is logged with the client's address (these calls change what everyone
    is served); refusals once an interval per client, call and reason, with how many came
    meanwhile (``kind``: the call's kind for that, where ``what`` names more, such as a path)."""
    try:
        how = _admission(settings, who, authorization, host)
    except ServingError as exc:
        _refusal_log.info(
            "%s refused for client %r: %s",
            what,
            who.client,
            exc.message,
            key=f"{who.client} {kind or what} {exc.message}",
        )
        raise
    log.info("%s for client %r (%s)", what, who.client, how)


def admits(settings: Settings, who: Caller, authorization: str, host: str | None) -> bool:
    """Whether ``check_admin`` would admit the call, neither logged nor raised: for a route open
    to anyone (``FEEDBACK_OPEN``) that records whether an admin made it."""
    try:
        _admission(settings, who, authorization, host)
    except ServingError:
        return False
    return True


def _scheme_host_port(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port or the scheme's default) of ``url``; None if it names no host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS.get(parts.scheme)


def check_same_site(sec_fetch_site: str | None, origin: str | None, host: str | None) -> None:
    """403 for a browser's cross-site request: ``Sec-Fetch-Site`` other than same-origin or none
    (typed URL, bookmark), or an ``Origin`` whose host and port are not the request's ``Host``
    (a Host without a port has the Origin scheme's). Clients that are not browsers send neither."""
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() not in SAME_SITE:
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {sec_fetch_site[:40]!r})")
    if origin is None:
        return
    source = _scheme_host_port(origin.strip())
    if source is None or source != _scheme_host_port(f"{source[0]}://{host or ''}"):
        raise Forbidden(f"cross-origin request refused (Origin {origin[:100]!r} is not the Host)")
