"""What our ASGI stack adds to one request over a framework-less app (issue 28), in process, no
sockets: the service's app (as ``python -m service`` builds it, over models/) and the raw ceiling
app (``../shared/peers/ceiling_asgi.py``) each called through ASGI with the same 1-image FP32 JSON
body, one request after another; then the same request entered at each layer from the outside in,
so the difference between two entries is what one layer costs.

    taskset -c 0 python -m bench asgi-cost [--requests 2000] [--rounds 3] [--cold] [--profile 3000]

``taskset -c 0`` as issue 28's pinned server; the settings are those of ``bench peers``' pinned
service (INTRA_OP_THREADS=1, LOG_LEVEL=warning, host 127.0.0.1), and the environment's others
apply (``INLINE_RUN_MAX_US=0`` times the hop). Prints each entry's median per round, then each
layer's cost; ``--profile N`` adds cProfile's view of N whole requests.

``--cold`` reads a buffer larger than the caches before every timed call (untimed): a request
then finds the caches as the real server's core does after waiting for the next one (under a
hypervisor, other guests run on the core meanwhile). The layers cost about twice as much so as
in a warm loop, which is what the real server shows (docs/benchmarks.md, "Cold caches").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import os
import pstats
import random
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import uvloop

from bench.bodies import v2_json
from bench.onnx_timer import latest_version
from bench.peer_workloads import PROBABILITIES
from bench.results import ROOT
from service.__main__ import tune_collector
from service.api.rest.app import ServiceApp, create_app
from service.api.rest.codec import decode_infer_request, encode_infer_response
from service.api.rest.infer import v2_infer
from service.core.logs import configure_logging
from service.dataplane.dataplane import DataPlane
from service.dataplane.pixels import model_pixels
from service.settings import Settings

CEILING = ROOT.parent / "shared" / "peers" / "ceiling_asgi.py"
MODEL = "cifar10_cnn"
PATH = f"/v2/models/{MODEL}/infer"
IDLE_TURNS = 3  # untimed turns of the loop after each request
EVICTION_BYTES = 64 * 2**20  # read before each call with --cold: over any core's cache share
# One request, timed: an awaitable made afresh per call.
Call = Callable[[], Coroutine[Any, Any, object]]


@dataclass(frozen=True)
class Entry:
    """A way into the request: ``name`` says what it leaves out (the layers outside it)."""

    name: str
    call: Call


def summary_us(seconds: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile (nearest rank) of ``seconds``, in microseconds."""
    ordered = sorted(seconds)
    p99 = ordered[max(0, -(-99 * len(ordered) // 100) - 1)]
    return statistics.median(ordered) * 1e6, p99 * 1e6


def layer_costs(medians_us: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """From entries ordered outside in, each with its median: what each entry adds over the next
    one in (its own layer's cost); the innermost keeps its whole median."""
    rows = list(medians_us)
    return [
        (name, us - (rows[i + 1][1] if i + 1 < len(rows) else 0.0))
        for i, (name, us) in enumerate(rows)
    ]


def scope_for(body: bytes, **extra: Any) -> dict[str, Any]:
    """The scope uvicorn builds for the load generator's request (bench/loadgen.py's headers)."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
        "method": "POST", "root_path": "", "path": PATH, "raw_path": PATH.encode(),
        "query_string": b"", "headers": headers, "state": {}, **extra,
    }  # fmt: skip


def asgi_call(app: Any, body: bytes, template: dict[str, Any]) -> Call:
    """One request to ``app``, checked to be answered 200."""

    async def request() -> None:
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the disconnect watcher: nobody leaves here
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(template), receive, send)
        if status != 200:
            raise SystemExit(f"{app!r} answered {status}")

    return request


def middleware_entries(app: ServiceApp, body: bytes) -> list[Entry]:
    """The service's app, the fast path it hands v2 infer to, and each middleware the fast path
    wraps itself in, inward, down to its answer; entries below the app get the scope
    ``FastInfer.takes`` would have set."""
    fast = app.fast_infer
    assert fast is not None
    entries = [Entry("the app (ServiceApp's __call__)", asgi_call(app, body, scope_for(body)))]
    inner = scope_for(body, path_params={"name": MODEL, "version": None}, route=fast.route)
    entries.append(Entry("FastInfer (its 500 guard)", asgi_call(fast, body, inner)))
    layer: Any = fast._serve
    while hasattr(layer, "app"):
        entries.append(Entry(type(layer).__name__, asgi_call(layer, body, inner)))
        layer = layer.app
    entries.append(Entry("the answer (read, v2_infer, send)", asgi_call(layer, body, inner)))
    return entries


def plane_entries(plane: DataPlane, body: bytes) -> list[Entry]:
    """Below the ASGI layers: v2_infer, the data plane, the runtime's hop and its bare run."""
    runtime = plane.model(MODEL)
    request = decode_infer_request(body, None, 64)
    pixels = model_pixels(runtime, request.inputs, PROBABILITIES)
    v2 = lambda: v2_infer(plane, MODEL, None, body, "application/json", None)  # noqa: E731

    async def run_alone() -> object:
        return runtime.run(pixels, PROBABILITIES)

    return [
        Entry("v2_infer (decode, infer, encode)", v2),
        Entry("DataPlane.infer", lambda: plane.infer(runtime, request)),
        Entry("ModelRuntime.infer (inline, or the hop)", lambda: runtime.infer(pixels)),
        Entry("ModelRuntime.run (onnxruntime alone)", run_alone),
    ]


async def codec_entries(plane: DataPlane, body: bytes) -> list[Entry]:
    """Decoding and encoding alone (not layers: parts of v2_infer)."""
    request = decode_infer_request(body, None, 64)
    response = await plane.infer(plane.model(MODEL), request)

    async def decode() -> object:
        return decode_infer_request(body, None, 64)

    async def encode() -> object:
        return encode_infer_response(response, {name: False for name in response.outputs})

    return [Entry("decode alone", decode), Entry("encode alone", encode)]


def load_ceiling(no_model: bool) -> Any:
    """``ceiling_asgi.app`` on the served version's graph (NO_MODEL=1: the HTTP + JSON floor)."""
    os.environ["MODEL_ONNX"] = str(latest_version(MODEL))
    os.environ["NO_MODEL"] = "1" if no_model else "0"
    name = "ceiling_asgi_floor" if no_model else "ceiling_asgi"
    spec = importlib.util.spec_from_file_location(name, CEILING)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def cache_eviction(nbytes: int = EVICTION_BYTES) -> Callable[[], object]:
    """A call that reads ``nbytes`` of memory (the caches then hold that, not a request's)."""
    buffer = np.ones(nbytes // 8)
    return buffer.sum


async def timed(
    call: Call, requests: int, before: Callable[[], object] | None = None
) -> list[float]:
    """Each call in a task of its own, as uvicorn runs each request; seconds per call. ``before``
    runs untimed ahead of each call (``cache_eviction`` for ``--cold``)."""
    loop = asyncio.get_running_loop()
    seconds = []
    for _ in range(requests):
        if before is not None:
            before()
        start = time.perf_counter()
        await loop.create_task(call())
        seconds.append(time.perf_counter() - start)
        # The loop turns a few times untimed, as a server's does while the client reads the
        # answer and sends the next request: work left for later (closing timers) is done then.
        for _ in range(IDLE_TURNS):
            await asyncio.sleep(0)
    return seconds


async def measure(
    entries: list[Entry],
    requests: int,
    rounds: int,
    block: int,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """``requests`` calls of every entry a round, in blocks of ``block`` calls, the entries taking
    turns block by block in a shuffled order (so the machine's noise, and the caches a neighbour
    leaves, fall on all alike); each entry's per-round medians (us) by name. 50 untimed calls of
    each first warm every path; ``before`` runs ahead of every timed call."""
    for entry in entries:
        await timed(entry.call, 50)
    order = random.Random(0)
    medians: dict[str, list[float]] = {}
    for round_ in range(rounds):
        seconds: dict[str, list[float]] = {entry.name: [] for entry in entries}
        for _ in range(max(1, requests // block)):
            for entry in order.sample(entries, len(entries)):
                seconds[entry.name] += await timed(entry.call, block, before)
        for entry in entries:
            p50, p99 = summary_us(seconds[entry.name])
            medians.setdefault(entry.name, []).append(p50)
            print(f"round {round_ + 1} {entry.name:40s} p50 {p50:7.1f} p99 {p99:7.1f} us")
    return medians


def report(groups: list[list[Entry]], medians: dict[str, list[float]]) -> None:
    """Per entry: the median of its round medians, and (within a group) its layer's cost."""
    print("\nentry (outside in)                        median us   layer us   (rounds)")
    for group in groups:
        rows = [(e.name, statistics.median(medians[e.name])) for e in group]
        for (name, us), (_, own) in zip(rows, layer_costs(rows), strict=True):
            spread = ", ".join(f"{m:.0f}" for m in medians[name])
            print(f"{name:40s} {us:9.1f} {own:10.1f}   ({spread})")
        print()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per entry")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=20, help="calls in a row of one entry")
    parser.add_argument(
        "--cold", action="store_true", help="evict the caches before every timed call"
    )
    parser.add_argument("--profile", type=int, default=0, help="then cProfile N app requests")
    parser.add_argument("--top", type=int, default=30, help="functions the profile lists")


async def run(args: argparse.Namespace) -> None:
    settings = Settings(
        model_repository=ROOT / "models", host="127.0.0.1", grpc_port=-1,
        intra_op_threads=1, log_level="warning",
    )  # fmt: skip  # as bench peers' pinned server: INTRA_OP_THREADS=1, LOG_LEVEL=warning
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    plane: DataPlane = app.state.dataplane
    body = v2_json(1, "FP32", PROBABILITIES)
    async with app.router.lifespan_context(app):
        await asgi_call(app, body, scope_for(body))()  # builds the middleware stack
        tune_collector(settings)
        ceilings = [
            Entry("ceiling_asgi (model)", asgi_call(load_ceiling(False), body, scope_for(body))),
            Entry("ceiling_asgi (NO_MODEL)", asgi_call(load_ceiling(True), body, scope_for(body))),
        ]
        groups = [
            ceilings,
            middleware_entries(app, body) + plane_entries(plane, body),
            await codec_entries(plane, body),
        ]
        entries = [entry for group in groups for entry in group]
        before = cache_eviction() if args.cold else None
        print("caches evicted before every call" if args.cold else "warm: calls back to back")
        report(groups, await measure(entries, args.requests, args.rounds, args.block, before))
        if args.profile:
            call = groups[1][0].call
            profiler = cProfile.Profile()
            profiler.enable()
            await timed(call, args.profile)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


def main(args: argparse.Namespace) -> None:
    uvloop.run(run(args))


if __name__ == "__main__":  # python -m bench.asgi_cost: also in an older checkout, copied in
    cli = argparse.ArgumentParser(prog="python -m bench.asgi_cost", description=__doc__)
    add_arguments(cli)
    main(cli.parse_args())
