"""The block and figures of ``python -m bench shm``: system shared memory against the binary
extension, 256-image batches from a client on the same machine. Standard library only."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def shm(record: Record) -> str:
    r = record["results"]
    lines = [
        "| client, way | requests | p50 ms | mean ms | images/s |",
        "|---|---|---|---|---|",
    ]
    for way, row in r["ways"].items():
        lines.append(
            f"| {way} | {row['requests']:,} | {row['p50_ms']:.2f} | {row['mean_ms']:.2f} | "
            f"{row['images_per_s']:,} |"
        )
    return "\n".join(
        [
            "## System shared memory against the binary extension",
            "",
            f"`{record['command']}`, {record['time']}, commit {record['commit']}; "
            f"{r['images']}-image UINT8 batches of `{r['model']}`, one request at a time from "
            f"tritonclient on the same machine, {r['rounds']} rounds of {r['seconds']} s per way "
            "taken in turn; the client's own copies (serialising, or writing and reading its "
            "regions) are in the times.",
            "",
            *lines,
        ]
    )


def speedup(way: str) -> tuple[str, Any]:
    """Shared memory's images/s over the binary extension's (from mean latencies), HTTP or gRPC."""
    return ("shm", lambda r: f"{r['results']['speedup'][way]:.2f}x")


def p50_ratio(binary: str, shared: str) -> tuple[str, Any]:
    """The binary extension's median latency over shared memory's (above 1: shared is faster)."""

    def draw(record: Record) -> str:
        ways = record["results"]["ways"]
        return f"{ways[binary]['p50_ms'] / ways[shared]['p50_ms']:.2f}x"

    return ("shm", draw)


FIGURES = {
    "shm.http.speedup": speedup("HTTP"),
    "shm.grpc.speedup": speedup("gRPC"),
    "shm.http.p50-ratio": p50_ratio("HTTP binary", "HTTP shared memory"),
    "shm.grpc.p50-ratio": p50_ratio("gRPC raw", "gRPC shared memory"),
    "shm.when": ("shm", lambda r: r["time"][:10]),
}
