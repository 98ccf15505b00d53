"""Raw loopback sockets for the connection tests: every wait bounded, a close read to its end."""

from __future__ import annotations

import contextlib
import socket
import time


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


def kernel_held(sock: socket.socket) -> int:
    """Bytes of ``sock``'s loopback connection that the kernel holds: the server's send queue and
    the client's receive queue (Linux's /proc/net/tcp; ``sock`` is the client's end)."""
    ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    held = 0
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rpartition(":")[2], 16) for f in fields[1:3])
            send_queue, receive_queue = (int(q, 16) for q in fields[4].split(":"))
            if (local, remote) == (theirs, ours):
                held += send_queue
            elif (local, remote) == (ours, theirs):
                held += receive_queue
    return held


def settled(sock: socket.socket, above: int) -> int:
    """``kernel_held(sock)`` once it is over ``above`` and has not changed for 0.03 s (after 1 s,
    whatever it is)."""
    deadline = time.monotonic() + 1
    held, since = kernel_held(sock), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        if (now := kernel_held(sock)) != held:
            held, since = now, time.monotonic()
        elif held > above and time.monotonic() - since >= 0.03:
            break
    return held


def fill_unread(sock: socket.socket, request: bytes) -> None:
    """Sends ``request`` again and again, reading nothing, until its answer no longer fits in the
    kernel's buffers: the server's own buffer then holds part of the last answer, or of the last
    two where the one before fitted all but a tenth (so under two answers' size)."""
    sock.sendall(request)
    size = held = settled(sock, 0)
    while True:
        sock.sendall(request)
        now = settled(sock, held)
        if now - held < size * 0.9:
            return
        held = now
