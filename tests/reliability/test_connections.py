"""Real server, raw sockets on loopback: slow clients are cut off without holding the service,
a streamed body is refused at the limit while it is still arriving, idle keep-alive connections
close, a client that stops reading its answer loses its connection (and one that reads slowly
does not), and a full batch queue answers 503 with Retry-After and recovers by itself."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from swagger_ui_bundle import swagger_ui_path

from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, running_server, wait_until
from tests.support.sockets import exchange, fill_unread, read_to_end

BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.0
WRITE_TIMEOUT_S = 0.5
MAX_PIPELINED = 16  # the setting's default is 64
ASSET = "/docs/assets/swagger-ui-bundle.js"  # about 1 MB, sent in one piece from memory
LIMIT = 100_000
GOOD = json.dumps({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                               "data": [0] * 3072}]}).encode()  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("connections"))
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        body_timeout_s=BODY_TIMEOUT_S,
        keep_alive_timeout_s=KEEP_ALIVE_S,
        write_timeout_s=WRITE_TIMEOUT_S,
        max_request_bytes=LIMIT,
        max_pipelined=MAX_PIPELINED,
    )
    with running_server(settings, grpc=False) as running:
        yield running


def connect(server: Running) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=20)
    sock.settimeout(20)  # every wait below is bounded
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest[:length]


def post_head(path: str, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\n{size}{extra}\r\n"
    ).encode()


@pytest.mark.parametrize("path", ["/v2/models/tiny/infer", "/v1/models/tiny:predict"])
def test_a_body_sent_too_slowly_is_a_408(server: Running, path: str) -> None:
    with connect(server) as sock:
        sock.sendall(post_head(path, len(GOOD)))
        sent = 0
        status = None
        while sent < 50:  # a byte every 0.2 s (the whole body would take half an hour)
            try:
                sock.sendall(GOOD[sent : sent + 1])
            except OSError:
                break
            sent += 1
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                peek = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                peek = None
            finally:
                sock.setblocking(True)
            if peek:
                status, headers, body = read_response(sock)
                break
        assert status == 408
        assert headers.get("connection") == "close"
        assert "did not arrive within 1 s" in json.loads(body)["error"]
        assert headers.get("x-request-id")


def test_slow_header_senders_do_not_hold_up_other_clients(server: Running) -> None:
    """Fifty connections each dribbling a request head never finish it; a normal client is
    answered meanwhile, and every slow connection is closed once we stop."""
    slow = [connect(server) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        with httpx.Client(base_url=server.url, timeout=20) as http:
            for _ in range(5):
                for sock in slow:
                    sock.sendall(b"a")
                response = http.post("/v2/models/tiny/infer", content=GOOD)
                assert response.status_code == 200
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("path", ["/v2/models/tiny/infer", "/v1/models/tiny:predict"])
def test_a_streamed_body_is_refused_at_the_limit_while_arriving(server: Running, path: str) -> None:
    """Chunked upload (no Content-Length) of three times the limit, never finished: a server
    that buffered the whole body would wait for its end forever; this one answers 413."""
    chunk = b"1" * 8192
    with connect(server) as sock:
        sock.sendall(post_head(path, None, "Transfer-Encoding: chunked\r\n"))
        try:
            for _ in range(3 * LIMIT // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server closed on us mid-upload: fine, the answer is already there
        status, headers, body = read_response(sock)  # the body's last chunk was never sent
    assert status == 413
    assert headers.get("connection") == "close"
    assert f"over the limit of {LIMIT} bytes" in json.loads(body)["error"]


def test_idle_keep_alive_connections_are_closed(server: Running) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server (the 20 s socket timeout bounds it)
        assert time.monotonic() - started >= KEEP_ALIVE_S * 0.5


def held_by_server(server: Running, client: socket.socket) -> bool:
    """Whether the server (in this process) still holds its end of ``client``'s connection."""
    port, process = client.getsockname()[1], psutil.Process()
    listed = getattr(process, "net_connections", process.connections)  # psutil 6 renamed it
    return any(
        c.raddr and c.raddr.port == port and c.laddr.port == server.rest_port for c in listed("tcp")
    )


def small_window(server: Running, receive_buffer: int) -> socket.socket:
    """A connection whose client takes at most ``receive_buffer`` bytes ahead of its reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.rest_port))
    return sock


def test_a_client_that_stops_reading_loses_its_connection_and_its_request_ends(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    get = f"GET {ASSET} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    with small_window(server, 4096) as sock:
        sock.sendall(get * 16)  # 16 MB of answers, pipelined, and never read until the end
        started = time.monotonic()
        # held first: until the server accepts, it holds no end to look for (CI was fooled so)
        wait_until(lambda: held_by_server(server, sock), 5, "the server accepting it")
        wait_until(lambda: not held_by_server(server, sock), 15, "the server closing it")
        assert time.monotonic() - started >= WRITE_TIMEOUT_S * 0.9
        received = read_to_end(sock)  # what was in flight, then the reset
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < 16_000_000
    # The answer that was waiting ended quietly (uvicorn had woken it to write to the closed
    # transport: a 500 traceback), and the server answers as before.
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_client_that_reads_slowly_but_steadily_gets_its_whole_answer(server: Running) -> None:
    size = (swagger_ui_path / ASSET.rsplit("/", 1)[1]).stat().st_size
    with small_window(server, 65536) as sock:
        sock.sendall(f"GET {ASSET} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while len(data.partition(b"\r\n\r\n")[2]) < size:
            time.sleep(0.2)  # 64 kB at most per 0.2 s: the server waits to write most of the time
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(data)} bytes"
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n"
LARGE_HEADS = {
    "a 100 kB header": LIVE + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "a 100 kB URL": b"GET /v2/health/live?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    "101 fields": LIVE + b"X-N: v\r\n" * 100 + b"\r\n",
    "10 MB of one header, unfinished": LIVE + b"X-Big: " + b"a" * 10_000_000,
    "a million fields, unfinished": LIVE + b"X-N: v\r\n" * 1_000_000,
}


@pytest.mark.parametrize("head", LARGE_HEADS.values(), ids=LARGE_HEADS.keys())
def test_a_request_head_over_the_limit_is_a_431_and_closed(server: Running, head: bytes) -> None:
    answer = exchange(server.rest_port, head)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:200]
    assert b"connection: close" in rest
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "error": "the request head is over the limit of 65536 bytes or 100 header fields"
    }


def test_heads_within_the_limit_are_served_after_a_large_body_in_the_same_read(
    server: Running,
) -> None:
    body = GOOD + b" " * (LIMIT - len(GOOD))  # the read that ends it begins the next head
    near_limit = LIVE + b"X-Big: " + b"a" * 60_000 + b"\r\n" + b"X-N: v\r\n" * 90
    raw = post_head("/v2/models/tiny/infer", len(body)) + body
    raw += near_limit + b"Connection: close\r\n\r\n"
    answers = exchange(server.rest_port, raw)
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers[:300]


def test_requests_pipelined_past_the_limit_are_dropped_and_the_rest_answered_before_a_close(
    server: Running,
) -> None:
    """uvicorn parses a whole read at once: 256 kB of tiny pipelined requests held 4 MB."""
    answers = exchange(server.rest_port, (LIVE + b"\r\n") * 1000)
    count = answers.count(b"HTTP/1.1 200 OK")
    # The one answered first and the setting's worth waiting (17 when one read holds them all;
    # a read split in two may let a few more in), far under the default's 64
    assert MAX_PIPELINED < count < 64
    assert answers.count(b"connection: close") == 1
    assert b"connection: close" in answers.rpartition(b"HTTP/1.1 200 OK")[2]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_full_queue_answers_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    """The batcher waits 300 ms for company, so a burst piles up behind the first request and
    overflows a queue of 16 images; once the burst is gone every request is served again."""
    settings = Settings(
        model_repository=make_model_repo(tmp_path),
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        max_queue_images=16,
        max_batch_delay_ms=300,
    )
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    tensor = {"name": "images", "shape": [4, 32, 32, 3], "datatype": "UINT8"}
    body = json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]})

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return await asyncio.gather(
                *(http.post("/v2/models/cifar10_cnn/infer", content=body) for _ in range(40))
            )

    with running_server(settings, grpc=False) as running:
        answers = asyncio.run(burst(running.url))
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {200, 503}, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1"
                assert "queue is full" in answer.json()["error"]
        with httpx.Client(base_url=running.url, timeout=30) as http:
            for _ in range(3):
                assert http.post("/v2/models/cifar10_cnn/infer", content=body).status_code == 200


RANGE = f"GET {ASSET} HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-39999\r\n\r\n".encode()
LAST_WORDS = {  # what makes the server close, once its buffer holds part of an answer
    "kept alive past its timeout": b"",
    "Connection: close": LIVE + b"Connection: close\r\n\r\n",
    "a malformed request": b"NOT HTTP\r\n\r\n",
}


@pytest.mark.parametrize("last", LAST_WORDS.values(), ids=LAST_WORDS.keys())
def test_a_client_that_leaves_a_small_answer_unread_loses_its_connection(
    server: Running, last: bytes
) -> None:
    """Under the 64 kB high-water mark the transport never pauses; the close that follows waited
    for the unread bytes for ever, holding the connection's place under MAX_CONNECTIONS."""
    with small_window(server, 4096) as sock:
        fill_unread(sock, RANGE)  # 40 kB answers: the last one partly in the server's buffer
        sock.sendall(last)
        started = time.monotonic()
        wait_until(lambda: not held_by_server(server, sock), 10, "the server closing it")
        # not at once: the write timeout's clock may start a little before ``started`` (a
        # clean-clone run saw 0.449 s of a 0.5 s timeout)
        assert time.monotonic() - started >= WRITE_TIMEOUT_S * 0.5
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def chunked(body: bytes, piece: int) -> bytes:
    """``body`` as a chunked v2 infer request, in chunks of ``piece`` bytes."""
    head = (
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_a_body_in_many_tiny_chunks_is_refused_before_it_holds_the_loop(server: Running) -> None:
    """1-byte chunks cost the loop about 0.3 us each: one client streaming them held it at 80 %
    and health checks at 35 ms on average. Past 1,024 pieces they must average 256 bytes."""
    answer = exchange(server.rest_port, chunked(GOOD, 1))
    body = answer.partition(b"\r\n\r\n")[2]
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    assert json.loads(body)["error"] == (
        "the request body came in 1025 pieces of 1 bytes on average; past 1024 pieces they "
        "must average 256 bytes"
    )
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_body_in_small_chunks_under_the_count_is_answered(server: Running) -> None:
    answer = exchange(server.rest_port, chunked(GOOD, 10) + LIVE + b"Connection: close\r\n\r\n")
    assert len(GOOD) // 10 < 1024
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1 200 OK") == 2


H2C = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
WEBSOCKET = (
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_a_request_with_a_body_that_asks_to_switch_protocols_is_told_so(server: Running) -> None:
    """curl's --http2 over plain HTTP asks for h2c on every request. httptools stops at such a
    head to switch, so a body was lost and the request answered as empty ("the request body is
    empty"); nothing here switches, so it is told why, and the connection closed."""
    for frame in ("Content-Length", "Transfer-Encoding"):
        if frame == "Content-Length":
            raw = post_head("/v2/models/tiny/infer", len(GOOD), H2C) + GOOD
        else:
            raw = post_head("/v2/models/tiny/infer", None, H2C + "Transfer-Encoding: chunked\r\n")
            raw += chunked(GOOD, 4096).partition(b"\r\n\r\n")[2]
        answer = exchange(server.rest_port, raw)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        assert b"connection: close" in answer
        assert "switch protocols" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    plain = exchange(server.rest_port, post_head("/v2/models/tiny/infer", len(GOOD)) + GOOD)
    assert plain.startswith(b"HTTP/1.1 200 OK"), plain[:200]


@pytest.mark.parametrize("upgrade", [H2C, WEBSOCKET], ids=["h2c", "websocket"])
def test_a_bodiless_request_that_asks_to_switch_protocols_is_served_as_it_is(
    server: Running, upgrade: str, caplog: pytest.LogCaptureFixture
) -> None:
    """There are no WebSocket routes (uvicorn's ws="none"): a handshake is a plain GET, answered
    as one, and neither it nor an h2c offer writes a warning (anyone could fill the log)."""
    head = f"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\n{upgrade}\r\n"  # kept alive
    with caplog.at_level("INFO"):
        answer = exchange(server.rest_port, head.encode())
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    assert not [r for r in caplog.records if r.levelno >= 20 and "pgrade" in r.getMessage()]


@pytest.mark.parametrize(
    ("query", "status"),
    [("a=1&" * 255, 200), ("a=1&" * 300, 414), ("a=" + "1" * 9000, 414)],
    ids=["255-fields", "300-fields", "a-9-kB-value"],
)
def test_a_request_target_past_its_limits_is_a_414(
    server: Running, query: str, status: int
) -> None:
    """FastAPI parses the query of every routed request, about 1.5 us a field: 15,000 fields in
    60 kB (under the head limit) cost 23 ms a request, and eight clients sending them held
    health checks at 86 ms. Past 8 kB or 256 fields the target is refused before any parse."""
    answer = exchange(server.rest_port, f"GET /v2/health/live?{query} HTTP/1.1\r\n".encode()
                      + b"Host: localhost\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    if status == 414:
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "error": "the request target is over the limit of 8192 bytes or 256 query fields"
        }


def test_malformed_requests_write_one_warning_an_interval_not_one_each(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn warned once per malformed request line: one client's 311 kB of them grew the log
    by 1.6 MB in 4 s. One line now, then one an interval saying how many came meanwhile."""
    with caplog.at_level("WARNING", logger="uvicorn.error"):
        for _ in range(50):
            assert exchange(server.rest_port, b"X / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    lines = [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]
    assert len(lines) <= 1, [r.getMessage() for r in lines]


@pytest.mark.parametrize("refused", ["target", "upgrade"])
def test_a_refused_request_behind_one_being_answered_is_answered_after_it(
    server: Running, refused: str
) -> None:
    """Pipelined: the refusal of the second request comes after the first one's answer, not in
    its place (a 414 was read as the first request's answer, and an upgrade's 400 left the
    first request unanswered; the reviewer's find)."""
    first = post_head("/v2/models/tiny/infer", len(GOOD)) + GOOD
    if refused == "target":
        second = b"GET /v2/health/live?a=" + b"1" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        status = b"HTTP/1.1 414 "
    else:
        second = post_head("/v2/models/tiny/infer", len(GOOD), H2C) + GOOD
        status = b"HTTP/1.1 400 "
    answers = exchange(server.rest_port, first + second)
    assert answers.startswith(b"HTTP/1.1 200 OK"), answers[:200]
    assert answers.count(b"HTTP/1.1 ") == 2 and status in answers, answers[:400]
