"""A small closed-loop gRPC load generator: N concurrent callers on one HTTP/2 channel, each sending
the same ModelInfer request again as soon as its answer arrives, for a fixed time. Prints one JSON
line with the keys of ``bench/loadgen.py`` (``server``: the server's own per-request times).

    python -m bench.loadgen_grpc --address 127.0.0.1:8001 --model cifar10_cnn --images 1 \
        --concurrency 64 --seconds 10

The request (raw UINT8 pixels in ``raw_input_contents``, as tritonclient.grpc sends them) is
serialized once and the answers are not parsed, so the client's own cost per call stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time

import grpc
from tritonclient.grpc import service_pb2

from bench.bodies import pixels
from bench.loadgen import summarise
from bench.server_stats import describe, grpc_statistics, measured_window

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, images: int) -> bytes:
    raw = pixels(images)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="UINT8", shape=list(raw.shape))
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(raw.tobytes())
    body: bytes = request.SerializeToString()
    return body


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = infer_request(args.model, args.images)
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(args.address) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        await call(body, timeout=30)  # connect and check before the clock starts
        now = time.perf_counter()
        record_from = now + args.warmup
        stop_at = record_from + args.seconds

        async def worker() -> None:
            while True:
                start = time.perf_counter()
                if start >= stop_at:
                    return
                try:
                    await call(body, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if start >= record_from:
                        errors.append(exc.code().name)
                    continue
                if start >= record_from:
                    latencies.append(time.perf_counter() - start)

        workers = asyncio.gather(*(worker() for _ in range(args.concurrency)))
        read = functools.partial(grpc_statistics, args.address, args.model)
        server = await measured_window(read, args.warmup, workers)
    return {**summarise(args, latencies, errors), "server": server}


def run_blocking(args: argparse.Namespace) -> dict[str, object]:
    """One caller on grpcio's blocking API: a lighter client per call than grpc.aio's, so a
    1-client latency shows more of the server and less of the client."""
    body = infer_request(args.model, args.images)
    latencies: list[float] = []
    errors: list[str] = []
    with grpc.insecure_channel(args.address) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        call(body, timeout=30)
        record_from = time.perf_counter() + args.warmup
        stop_at = record_from + args.seconds
        while (start := time.perf_counter()) < stop_at:
            try:
                call(body, timeout=30)
            except grpc.RpcError as exc:
                if start >= record_from:
                    errors.append(exc.code().name)
                continue
            if start >= record_from:
                latencies.append(time.perf_counter() - start)
    return summarise(args, latencies, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port of the gRPC service")
    parser.add_argument("--model", default="cifar10_cnn")
    parser.add_argument("--images", type=int, default=1, help="images in each request")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--blocking", action="store_true", help="one caller on the blocking API (--concurrency 1)"
    )
    args = parser.parse_args()
    if not args.address.startswith(("127.", "localhost")):
        sys.exit("loadgen_grpc only targets loopback addresses")
    if args.blocking and args.concurrency != 1:
        sys.exit("--blocking is one caller: use it with --concurrency 1")
    try:
        summary = run_blocking(args) if args.blocking else asyncio.run(run(args))
        print(describe(summary), file=sys.stderr)
        print(json.dumps(summary))
    except grpc.RpcError as exc:  # the first call, before timing, failed
        sys.exit(f"loadgen_grpc: {exc.code().name}: {exc.details()}")


if __name__ == "__main__":
    main()
