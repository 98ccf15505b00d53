"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the same
request again as soon as its answer arrives, for a fixed time. Prints one JSON line of results.

    python -m bench.loadgen --address 127.0.0.1:8000 --path /v2/models/cifar10_cnn/infer \
        --body-file body.json --content-type application/json --concurrency 64 --seconds 10

Raw asyncio streams and prebuilt request bytes keep the client's own cost per request small, so
it measures the server rather than itself (it runs in its own process, on loopback only). The
server's own per-request queue and compute times (its statistics extension, over the measured
window) go into the JSON as ``server`` and beside the client's latency on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path

from bench.server_stats import describe, measured_window, rest_statistics


def build_request(host: str, path: str, body: bytes, headers: list[str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """A response head's status, Content-Length (-1: none) and whether its body is chunked."""
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status. Bodies are read by Content-Length or chunks."""
    status, length, chunked = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if length >= 0:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    record_from: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                errors.append(type(exc).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            end = time.perf_counter()
            if start >= record_from:
                if status == 200:
                    latencies.append(end - start)
                else:
                    errors.append(str(status))
    finally:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def summarise(
    args: argparse.Namespace, latencies: list[float], errors: list[str]
) -> dict[str, object]:
    """The JSON line both load generators print (``bench.load`` reads these keys)."""
    latencies = sorted(latencies)
    done = len(latencies)
    return {
        "concurrency": args.concurrency,
        "images_per_request": args.images,
        "seconds": args.seconds,
        "requests": done,
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "requests_per_s": done / args.seconds,
        "images_per_s": done * args.images / args.seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpus": sorted(os.sched_getaffinity(0)),  # where it may run: pinned runs check this
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    host, _, port = args.address.partition(":")
    body = args.body_file.read_bytes() if args.body_file else b""
    headers = [f"Content-Type: {args.content_type}", *args.header]
    request = build_request(args.address, args.path, body, headers)
    now = time.perf_counter()
    record_from = now + args.warmup
    stop_at = record_from + args.seconds
    latencies: list[float] = []
    errors: list[str] = []
    workers = asyncio.gather(
        *(
            worker(host, int(port), request, stop_at, record_from, latencies, errors)
            for _ in range(args.concurrency)
        )
    )
    read = functools.partial(rest_statistics, args.address, args.path)
    server = await measured_window(read, args.warmup, workers)
    return {**summarise(args, latencies, errors), "server": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="host:port on loopback")
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=1, help="images in each request")
    args = parser.parse_args()
    if not args.address.split(":")[0].startswith("127.") and not args.address.startswith(
        "localhost"
    ):
        sys.exit("loadgen only targets loopback addresses")
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    summary = asyncio.run(run(args))
    print(describe(summary), file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
