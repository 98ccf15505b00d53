"""Raw loopback sockets for the connection tests: every wait bounded, a close read to its end."""

from __future__ import annotations

import contextlib
import socket


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.settimeout(20)  # every wait is bounded
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """What the server sends until it closes (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def exchange(port: int, raw: bytes, timeout_s: float = 20) -> bytes:
    """Everything the server sends back for ``raw`` on a fresh connection until it closes (b""
    if it sends nothing within ``timeout_s``). A server that refuses before reading all of
    ``raw`` may reset the send; its answer is read all the same."""
    with connect(port) as sock:
        sock.settimeout(timeout_s)
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        try:
            return read_to_end(sock)
        except TimeoutError:
            return b""
