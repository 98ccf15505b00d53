"""``bench.alternating_client``: one client alternating single requests between servers. Every
server takes every place in a turn equally often, the gap is the median of paired differences
(not a difference of medians), and answers are read whole by Content-Length over keep-alive
connections to a real HTTP server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.alternating_client import Connection, alternate, summary
from bench.loadgen import build_request


class Recorder:
    """A stand-in connection: records the order of its exchanges, answers a fixed latency."""

    def __init__(self, name: str, order: list[str], seconds: float) -> None:
        self.name, self.order, self.seconds = name, order, seconds

    def exchange(self) -> float:
        self.order.append(self.name)
        return self.seconds


def test_every_server_takes_every_place_and_never_follows_itself() -> None:
    order: list[str] = []
    servers = [Recorder(name, order, 0.001) for name in "abc"]
    latencies = alternate(servers, 30)  # type: ignore[arg-type]
    assert [len(values) for values in latencies] == [30, 30, 30]
    turns = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(turn) == ["a", "b", "c"] for turn in turns)
    places = Counter((turn.index(name), name) for turn in turns for name in "abc")
    assert set(places.values()) == {10}  # each of 3 places, 10 times each
    assert all(order[i] != order[i + 1] for i in range(len(order) - 1))


def test_the_gap_is_the_median_of_paired_differences() -> None:
    first = [1.0, 2.0, 3.0, 10.0, 11.0]
    second = [1.1, 2.1, 9.0, 5.0, 6.0]  # pairs: +0.1, +0.1, +6, -5, -5 s
    found = summary(["a:1", "b:2"], [first, second])
    gap = found["servers"][1]
    assert gap["gap_us"] == pytest.approx(0.1e6)
    # the medians' difference would say 2 s
    assert found["servers"][1]["p50_ms"] - found["servers"][0]["p50_ms"] == pytest.approx(2000)
    assert found["requests"] == 5


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, Content-Length framed

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if self.path == "/ok" else 503
        payload = b"x" * 100_000 + body[-4:]  # more than one recv's worth
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_connection_reads_whole_answers_and_refuses_an_error(http_server: str) -> None:
    ok = Connection(http_server, build_request("127.0.0.1", "/ok", b"body", []))
    assert all(ok.exchange() > 0 for _ in range(5))  # the same connection, five answers
    assert ok.buffer == b""  # nothing of an answer left over for the next
    failing = Connection(http_server, build_request("127.0.0.1", "/busy", b"body", []))
    with pytest.raises(SystemExit, match="503"):
        failing.exchange()
