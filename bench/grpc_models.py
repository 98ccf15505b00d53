"""Which of grpcio's server models costs least per call (issue 28): the service's REST app with its
gRPC surface served one way or another, each measured by h2load for gRPC and REST binary alike.

    python -m bench grpc-models --rounds 2 --seconds 5 aio sync sync-direct aio-latency

Modes: ``aio`` is the service as shipped (``grpc.aio`` on uvicorn's loop); ``sync`` is
``grpc.server`` with a thread pool, each unary call handed to the same servicer on uvicorn's loop
and waited for; ``sync-direct`` answers ModelInfer on the pool thread alone (decode, run, encode:
no loop, batcher, leases, statistics or metrics), the floor of what a synchronous server could
cost; ``-latency`` adds ``grpc.optimization_target=latency``. A measurement, not a serving mode:
unary methods only. Prints one line per mode, protocol and round; needs h2load.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

MODES = ("aio", "aio-latency", "sync", "sync-latency", "sync-direct")


class Abort(Exception):
    """``context.abort`` of the aio servicer, carried back to the synchronous server's thread."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class LoopContext:
    """What the aio servicer asks of its context, answered from the synchronous one."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> Any:
        return self._context.peer()

    async def abort(self, code: Any, message: str) -> None:
        raise Abort(code, message)


def bridged(coroutine: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """A synchronous handler that runs the servicer's ``coroutine`` on ``loop`` and waits."""

    def behaviour(request: Any, context: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine(request, LoopContext(context)), loop)
        try:
            return future.result()
        except Abort as exc:
            context.abort(exc.code, exc.message)

    return behaviour


def direct_infer(plane: Any) -> Callable[[Any, Any], Any]:
    """ModelInfer on the calling thread alone: decode, ``session.run``, encode."""
    from service.api.grpc import codec
    from service.dataplane.pixels import model_pixels
    from service.dataplane.types import InferResponse

    def behaviour(request: Any, context: Any) -> Any:
        runtime = plane.model(request.model_name, request.model_version or None)
        infer = codec.decode_infer_request(request, plane.settings.max_images_per_request)
        requested = [o.name for o in infer.outputs]
        outputs = runtime.run(model_pixels(runtime, infer.inputs, requested), requested or None)
        version = str(runtime.version)
        return codec.encode_infer_response(
            InferResponse(runtime.name, version, infer.id, outputs, {})
        )

    return behaviour


def sync_handlers(mode: str, servicer: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """The unary methods for ``grpc.server``: bridged to the loop, or ModelInfer direct."""
    import grpc
    from google.protobuf.message_factory import GetMessageClass

    from service.api.grpc.handlers import SERVICE, request_parser

    handlers = {}
    for method in SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            continue
        direct = mode == "sync-direct" and method.name == "ModelInfer"
        behaviour = direct_infer(servicer.plane) if direct else bridged(
            getattr(servicer, method.name), loop
        )  # fmt: skip
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request_parser(method, sized=not direct),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def serve(mode: str, port: int, grpc_port: int) -> None:
    """The service's REST app on ``port`` and its gRPC surface on ``grpc_port``, as ``mode``."""
    import grpc
    import uvicorn

    from service.__main__ import uvicorn_options
    from service.api.grpc.handlers import method_handlers
    from service.api.grpc.server import connection_options
    from service.api.grpc.servicer import InferenceServicer
    from service.api.rest.app import create_app
    from service.settings import Settings

    settings = Settings(host="127.0.0.1", port=port, grpc_port=-1, log_level="warning")
    app = create_app(settings)
    options = connection_options(settings)
    if mode.endswith("-latency"):
        options.append(("grpc.optimization_target", "latency"))  # type: ignore[arg-type]
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        async with inner(scope_app) as value:
            servicer = InferenceServicer(app.state.dataplane)
            if mode.startswith("aio"):
                server: Any = grpc.aio.server(options=options)
                server.add_generic_rpc_handlers((method_handlers(servicer),))
            else:
                server = grpc.server(ThreadPoolExecutor(8), options=options)
                loop = asyncio.get_running_loop()
                server.add_generic_rpc_handlers((sync_handlers(mode, servicer, loop),))
            server.add_insecure_port(f"127.0.0.1:{grpc_port}")
            started = server.start()
            if mode.startswith("aio"):
                await started
            try:
                yield value
            finally:
                stopped = server.stop(1)
                if mode.startswith("aio"):
                    await stopped

    app.router.lifespan_context = lifespan
    uvicorn.run(app, **uvicorn_options(settings))


def serve_argv(mode: str, where: Any) -> list[str]:
    """The command that serves ``mode`` where ``where`` (a ``bench.server.Service``) says."""
    return [sys.executable, "-m", "bench", "grpc-models", "--serve", mode,
            str(where.port), str(where.grpc_port)]  # fmt: skip


def compare(modes: list[str], rounds: int, seconds: int, model: str = "cifar10_cnn") -> None:
    """Each mode in turn, ``rounds`` times: h2load's p50 and p99 per protocol, one line each."""
    from bench.grpc_h2load import bodies, check_once, h2load_commands, percentiles
    from bench.server import Service, free_port, start

    framed, rest, header_length = bodies(model)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(header_length),
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "grpc.bin").write_bytes(framed)
        (Path(tmp) / "rest.bin").write_bytes(rest)
        for round_ in range(1, rounds + 1):
            for mode in modes:
                where = Service(free_port(), free_port())
                group = start(serve_argv(mode, where), {}, where.port, Path(tmp) / "server.log", 60)
                try:
                    check_once(where, model, framed, rest, headers)
                    for name, command in h2load_commands(where, model, tmp, headers).items():
                        log = Path(tmp) / "h2load.log"
                        log.unlink(missing_ok=True)
                        subprocess.run(
                            ["h2load", "-c1", "-m1", "-D", str(seconds), "--warm-up-time", "1",
                             "--log-file", str(log), *command],
                            check=True, capture_output=True,
                        )  # fmt: skip
                        n, p50, p99 = percentiles(log)
                        print(f"round {round_} {mode:13s} {name:24s} requests {n} "
                              f"p50 {p50:.3f} ms p99 {p99:.3f} ms", flush=True)  # fmt: skip
                finally:
                    group.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modes", nargs="*", default=["aio", "sync", "sync-direct"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "GRPC_PORT"))


def main(args: argparse.Namespace) -> None:
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    compare(args.modes, args.rounds, args.seconds)
