"""Bounds on REST connections that uvicorn lacks, in its HTTP protocol (``http_protocol(settings)``,
given to uvicorn as ``http=``): a header-read timeout, a connection cap, a write timeout, bounds on
a request head and its target, on pipelined requests and on a body's pieces, no protocol switch
that would lose a body, and uvicorn's warnings throttled. ``service.core.open_files`` raises the
open-file limit so that the cap, not the descriptors, is what bounds connections."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.core.logs import new_request_id
from service.core.throttled_log import ThrottledLog
from service.settings import Settings

log = logging.getLogger(__name__)

# Header fields of one request (Apache's LimitRequestFields); past it a 431.
MAX_HEADER_FIELDS = 100
# A chunked body in pieces of 1 byte costs httptools and uvicorn about 0.3 us of the loop each,
# 45 ns a byte on the wire: one client streaming them held the loop at 80 % and health checks at
# 35 ms on average. Past MAX_BODY_PIECES pieces, a body must average MIN_PIECE_BYTES a piece (a
# body with a Content-Length comes a read at a time: its pieces are the kernel's segments).
MAX_BODY_PIECES = 1024
MIN_PIECE_BYTES = 256
# A request target (path and query) past this many bytes or query fields is a 414: FastAPI
# parses the query of every routed request, about 1.5 us a field, and 15,000 fields (60 kB, under
# the head limit) cost 23 ms a request; nginx takes 8 kB lines by default.
MAX_TARGET_BYTES = 8192
MAX_QUERY_FIELDS = 256


def _response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    """A complete ``Connection: close`` answer, written before the transport is closed."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"x-request-id: " + new_request_id().encode() + b"\r\n" + extra + b"content-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


# uvicorn's own warnings (a malformed request, say) and the refusals at the cap, throttled
_uvicorn_log = ThrottledLog(logging.getLogger("uvicorn.error"))
_refusal_log = ThrottledLog(log)


class _TimedClose:
    """A connection's transport as uvicorn sees it: a ``close`` that leaves bytes unsent starts
    the protocol's write clock. uvloop's close waits for those bytes for as long as the client
    does not read them, so a client that left an answer of under the 64 kB high-water mark
    unread (kept alive past its timeout, ``Connection: close``, a 400) held its connection, and
    its place under ``MAX_CONNECTIONS``, for good."""

    def __init__(self, transport: asyncio.Transport, on_close: Callable[[], None]) -> None:
        self._transport = transport
        self._on_close = on_close
        # What uvicorn calls on every request, bound once rather than found through __getattr__.
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def close(self) -> None:
        self._transport.close()
        self._on_close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Refused(Exception):
    """Raised in a parser callback to stop httptools; the protocol's ``refusal`` answers."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with four bounds. A connection must deliver complete
    request headers within ``header_timeout_s`` of opening (or of the first byte of its next
    request when kept alive), else it is closed, with a 408 if part of a head came: half-open
    connections (slowloris) cannot pile up until the open-file limit turns everyone away.
    A head of over ``max_header_bytes`` or ``MAX_HEADER_FIELDS`` fields is a 431 and closed
    (httptools has no limit: 6 MB of one-line headers held 115 MiB of Python objects).
    Past ``max_connections`` open connections a new one is answered 503 and closed at once,
    before reading anything: its descriptor is freed immediately (uvicorn's own
    ``limit_concurrency`` answers 503 only once the headers are in, so it holds the socket
    until then). A connection whose client takes none of what is written to it for
    ``write_timeout_s`` is aborted: uvicorn stops a request's ``send`` while the client does not
    read, so the request would hold its body, its budget and its model version for as long as
    the client chose (nginx's ``send_timeout``)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout_s: float,
        max_connections: int,
        write_timeout_s: float,
        max_header_bytes: int,
        max_pipelined: int,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = cast(logging.Logger, _uvicorn_log)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.write_timeout_s = write_timeout_s
        self.header_timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.unsent = 0  # bytes waiting to be written when the write clock was started
        # Every request of this connection, pipelined ones too (uvicorn's ``cycle`` is only the
        # latest), so that all of them learn the client is gone.
        self.cycles: weakref.WeakSet[RequestResponseCycle] = weakref.WeakSet()
        self.head_started = False  # a byte of the awaited request has arrived
        self.max_header_bytes = max_header_bytes
        self.head_bytes = 0  # of the awaited head, in the chunks after the one it began in
        self.chunk_bytes = 0  # the chunk being parsed
        self.head_continued = False  # a head was in progress when that chunk came
        self.refusal: Callable[[], None] | None = None  # how a ``Refused`` request is answered
        # Requests read ahead of their answers (pipelined) and waiting their turn: uvicorn parses
        # all of a read at once, each request into ~650 bytes of Python objects (one 256 kB read
        # of tiny requests held 4 MB). Past this many the connection reads no further, and closes
        # once those are answered; its client sends the rest again (RFC 9112 9.3.2).
        self.max_pipelined = max_pipelined
        self.pipeline_full = False  # past max_pipelined: nothing more is read
        self.body_pieces = self.body_bytes = 0  # of the request being read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _TimedClose(transport, self._closing)))
        if len(self.connections) > self.max_connections:  # this one included
            _refusal_log.warning("connections refused at MAX_CONNECTIONS=%d", self.max_connections)
            message = f"the server holds its maximum of {self.max_connections} connections"
            transport.write(_response(b"503 Service Unavailable", message, b"retry-after: 1\r\n"))
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_write_timer()
        self._disconnect_requests()
        super().connection_lost(exc)

    def _disconnect_requests(self) -> None:
        """Every unanswered request of this connection sees the client gone: its next ``send``
        returns at once. uvicorn marks only its latest request, so with requests pipelined the
        one still answering wrote on to the closed transport (uvloop raises: a 500 traceback)."""
        for cycle in self.cycles:
            if not cycle.response_complete:
                cycle.disconnected = True

    def _closing(self) -> None:
        """The transport was asked to close: bytes still unsent wait for the client only as long
        as it reads (the write clock), not for ever."""
        if self.write_timer is None and self.transport.get_write_buffer_size():
            self._arm_write_timer()

    def pause_writing(self) -> None:
        """The transport holds more than it may: the client's reading is timed from now."""
        super().pause_writing()
        if self.write_timer is None:
            self._arm_write_timer()

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def _arm_write_timer(self) -> None:
        self.unsent = self.transport.get_write_buffer_size()
        self.write_timer = self.loop.call_later(self.write_timeout_s, self._write_timeout)

    def _cancel_write_timer(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _write_timeout(self) -> None:
        """A client that took some of the answer meanwhile gets another period; one that took
        none loses the connection (what it was sent is dropped, the request ends)."""
        if self.transport.get_write_buffer_size() < self.unsent:
            self._arm_write_timer()
            return
        self.write_timer = None
        log.info("a client read nothing for %g s: its connection is closed", self.write_timeout_s)
        self._disconnect_requests()
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.pipeline_full:
            return  # the connection closes after the requests it holds; the rest is dropped
        self.chunk_bytes, self.head_continued = len(data), self.head_started
        super().data_received(data)
        if not self.head_started or self.transport.is_closing():
            return  # nearly always: a head comes in one piece
        # A head still incomplete after this chunk: its size so far is bounded here, so that
        # httptools does not gather a long one (the chunk it began in may end a body before
        # it, so that one is not counted; the exact size is checked when it completes).
        self.head_bytes += len(data) if self.head_continued else 0
        if self.head_bytes > self.max_header_bytes or len(self.headers) > MAX_HEADER_FIELDS:
            self._refuse_head()
            return
        # Its clock starts now (a timer for every request would cost each microseconds).
        if self.header_timer is None:
            self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first request's clock runs from connection_made; a later one's from this chunk
        # (``data_received``).
        self.head_started = True
        self.head_bytes = 0
        self.body_pieces = self.body_bytes = 0

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self.head_started = False
        if self._head_too_large():
            self._refuse(self._refuse_head)
        if len(self.url) > MAX_TARGET_BYTES or self.url.count(b"&") >= MAX_QUERY_FIELDS:
            self._refuse(self._refuse_target)
        if self.parser.should_upgrade() and self._upgrade_with_body():
            self._refuse(self._refuse_upgrade)
        if self.pipeline_full or len(self.pipeline) >= self.max_pipelined:
            self._drop_the_rest()
            return
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycles.add(self.cycle)

    def _drop_the_rest(self) -> None:
        """A request past ``max_pipelined``: neither it nor anything after it is kept (the rest
        of this read is parsed into nothing, later reads are not parsed), and the connection
        closes after answering the last request it holds."""
        if not self.pipeline_full:
            self.pipeline_full = True
            self.pipeline[0][0].keep_alive = False  # the newest waiting: answered last

    def on_body(self, body: bytes) -> None:
        if self.pipeline_full:
            return
        self.body_pieces += 1
        self.body_bytes += len(body)
        pieces = self.body_pieces
        if pieces > MAX_BODY_PIECES and self.body_bytes < MIN_PIECE_BYTES * pieces:
            self._refuse(self._refuse_pieces)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.pipeline_full:
            super().on_message_complete()

    def _head_too_large(self) -> bool:
        """Whether the complete head has too many fields or bytes; its bytes are counted only
        where they could be too many (it did not come whole in one chunk under the limit)."""
        if len(self.headers) > MAX_HEADER_FIELDS:
            return True
        if not self.head_continued and self.chunk_bytes <= self.max_header_bytes:
            return False
        size = len(self.url) + sum([len(n) + len(v) + 4 for n, v in self.headers])
        return size > self.max_header_bytes

    def _refuse(self, refusal: Callable[[], None]) -> None:
        self.refusal = refusal
        raise Refused  # httptools stops; uvicorn's 400 for it becomes ``refusal`` (below)

    def send_400_response(self, msg: str) -> None:
        if self.refusal is None:
            super().send_400_response(msg)
        elif self._answering() and self.refusal != self._refuse_pieces:
            # A head refused behind requests still being answered (pipelined): its answer
            # comes after theirs, or it would be read as theirs (``on_response_complete``).
            self.pipeline_full = True  # nothing more is parsed
        else:
            refusal, self.refusal = self.refusal, None
            refusal()

    def _answering(self) -> bool:
        """Whether a request read before this one still has its answer to finish."""
        return self.cycle is not None and not self.cycle.response_complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.refusal is not None and self.pipeline_full and not self._answering():
            refusal, self.refusal = self.refusal, None
            refusal()

    def _upgrade_with_body(self) -> bool:
        """A request with a body asking to switch protocols (curl's ``--http2``: ``Upgrade:
        h2c``): httptools stops at its head to switch, so its body would be lost (nothing here
        switches; it was answered as an empty body)."""
        framing = (b"transfer-encoding", b"content-length")
        return any(name in framing and value != b"0" for name, value in self.headers)

    def _unsupported_upgrade_warning(self) -> None:
        """A bodiless request's Upgrade (a WebSocket's, h2c) is ignored and the request served:
        nothing here switches protocols (uvicorn's ``ws="none"``). uvicorn warned twice per
        such request, a log line anyone could buy by the thousand."""
        log.debug("a request's Upgrade header was ignored: nothing here switches protocols")

    def _refuse_upgrade(self) -> None:
        message = (
            "the request asks to switch protocols (its Upgrade header), which this server does "
            "not do, and its body would be lost: send it without (curl: no --http2)"
        )
        self._close_with(b"400 Bad Request", message)

    def _refuse_pieces(self) -> None:
        """400 for a body in pieces too small (unless its request's answer has begun: then only
        the close), and the connection closed: nothing more of it is parsed."""
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            message = (
                f"the request body came in {self.body_pieces} pieces of "
                f"{self.body_bytes // self.body_pieces} bytes on average; past "
                f"{MAX_BODY_PIECES} pieces they must average {MIN_PIECE_BYTES} bytes"
            )
            self.transport.write(_response(b"400 Bad Request", message))
        self.pipeline_full = True  # what else arrives is not parsed
        self._disconnect_requests()
        self.transport.close()

    def _refuse_target(self) -> None:
        message = (
            f"the request target is over the limit of {MAX_TARGET_BYTES} bytes or "
            f"{MAX_QUERY_FIELDS} query fields"
        )
        self._close_with(b"414 URI Too Long", message)

    def _refuse_head(self) -> None:
        """431 for a request head over ``max_header_bytes`` or ``MAX_HEADER_FIELDS``; closed."""
        message = (
            f"the request head is over the limit of {self.max_header_bytes} bytes or "
            f"{MAX_HEADER_FIELDS} header fields"
        )
        self._cancel_header_timer()
        self._close_with(b"431 Request Header Fields Too Large", message)

    def _close_with(self, status: bytes, message: str) -> None:
        """A refused request's answer, and the connection closed: nothing after it is parsed."""
        self.transport.write(_response(status, message))
        self.pipeline_full = True
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits because reading is paused while the request before it is
            # answered; its clock starts again rather than cutting that answer off.
            self._arm_header_timer()
            return
        if self.head_started:
            message = f"the request headers did not arrive within {self.header_timeout_s:g} s"
            self.transport.write(_response(b"408 Request Timeout", message))
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that does not read must not keep the socket
        else:
            self.transport.close()


def http_protocol(settings: Settings) -> functools.partial[BoundedHttpProtocol]:
    """uvicorn's ``http=`` for ``settings``: a partial of a module-level class pickles by
    reference, so it also reaches the worker processes of ``WORKERS`` > 1."""
    return functools.partial(
        BoundedHttpProtocol,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        write_timeout_s=settings.write_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_pipelined=settings.max_pipelined,
    )
