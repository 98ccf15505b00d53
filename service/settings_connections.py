"""The settings that bound connections and what a client may hold open: time limits on a
request's head, body and answer, the head's size, and the REST and gRPC connection caps.

A base of ``service.settings.Settings``, so they are fields of the one settings class (the same
environment variables); kept here to keep that module readable (docs/reliability.md explains
each value).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class ConnectionSettings(BaseSettings):
    """Timeouts, the request head's size and the connection caps, REST and gRPC."""

    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest time a client may take to send a request body once its headers are in; "
            "slower is a 408 and the connection is closed (slow clients cannot hold requests)."
        ),
    )
    keep_alive_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Idle keep-alive connections are closed after this long (uvicorn's).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description=(
            "Longest time a connection may take to deliver complete request headers (408 and "
            "closed), and gRPC's limit on a new connection's HTTP/2 handshake."
        ),
    )
    max_header_bytes: int = Field(
        default=65_536,
        ge=1024,
        description=(
            "Largest request head (request line and headers) in bytes, and at most 100 header "
            "fields; more is a 431 and the connection is closed."
        ),
    )
    write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A REST connection whose client takes none of its answer for this long is closed, "
            "the answer dropped (a client that stops reading cannot hold its request)."
        ),
    )
    max_pipelined: int = Field(
        default=64,
        ge=1,
        description=(
            "Most requests of one REST connection waiting behind the one being answered; past "
            "it the rest of the connection's input is dropped unparsed, those are answered and "
            "the connection closes (the client resends the rest)."
        ),
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="Most connections per process, REST and gRPC each (docs/reliability.md).",
    )
    grpc_max_concurrent_streams: int = Field(
        default=100,
        ge=1,
        description="Most calls in flight on one gRPC connection (HTTP/2 MAX_CONCURRENT_STREAMS).",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=1024,
        ge=0,
        description=(
            "Most gRPC calls at work per process (a unary call from its request message to its "
            "answer, a stream while its answers are computed), then RESOURCE_EXHAUSTED "
            "(0: no limit)."
        ),
    )
    grpc_max_waiting_calls: int = Field(
        default=4096,
        ge=1,
        description=(
            "Most gRPC calls per process waiting for a request message (a unary call at most "
            "BODY_TIMEOUT_S); past it the one that has waited longest is ended (UNAVAILABLE)."
        ),
    )
    grpc_stream_in_flight: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Most requests of one ModelStreamInfer stream run at once.",
    )
    grpc_compression: bool = Field(
        default=False,
        description=(
            "Accept gzip- and deflate-compressed gRPC messages, as Triton does. Off: they are "
            "refused (UNIMPLEMENTED) before they are inflated: 60 kB of gzip inflates to 60 MB "
            "and cost 0.3 s of the server's CPU, 1,000 times the plain message's per byte sent."
        ),
    )
    grpc_max_connection_age_ms: int = Field(
        default=300_000,
        ge=0,
        description=(
            "A gRPC connection is asked to close (GOAWAY) after about this long (+-10 %), so "
            "clients reconnect and a balancer spreads them over new replicas (0: never)."
        ),
    )
    grpc_max_connection_age_grace_ms: int = Field(
        default=30_000,
        ge=0,
        description="Time calls in flight get to finish on a connection closed for its age.",
    )
    grpc_max_connection_idle_ms: int = Field(
        default=300_000,
        ge=0,
        description=(
            "A gRPC connection with no call in flight for this long is closed (GOAWAY); the "
            "client reconnects on its next call (0: never)."
        ),
    )
