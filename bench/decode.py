"""What decoding one v2 infer request costs the event loop, step by step (issue 16).

    python -m bench decode [--images 1] [--repeats 3000] [--no-write]

Times, in microseconds per request, the parts of ``decode_infer_request`` on the bodies the
benchmarks send (a 1-image FP32 JSON body of ~59 KB, and the same pixels as UINT8 JSON and as
the binary extension), plus orjson on the JSON body for comparison. One process, one thread.
Writes ``docs/results/decode.json``; the JSON printed last is the measurements alone.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import orjson
import simdjson

from bench.publish import publish
from service.api.rest.codec import decode_infer_request
from service.api.rest.json_wire import loads_infer_request
from service.api.tensors import array_from_json


def per_call_us(fn: Callable[[], Any], repeats: int) -> float:
    """Median of five timed loops of ``repeats`` calls, after one untimed loop."""
    fn()
    loops = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        loops.append((time.perf_counter() - start) / repeats * 1e6)
    return round(sorted(loops)[2], 1)


def _simdjson_parse(body: bytes) -> Any:
    return simdjson.Parser().parse(body)  # a parser per request, as ``loads_infer_request`` does


def bodies(images: int) -> dict[str, tuple[bytes, int | None]]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    shape = list(pixels.shape)

    def json_body(datatype: str, data: Any) -> bytes:
        tensor = {"name": "images", "shape": shape, "datatype": datatype, "data": data}
        return orjson.dumps({"inputs": [tensor]})

    header = orjson.dumps(
        {"inputs": [{"name": "images", "shape": shape, "datatype": "UINT8",
                     "parameters": {"binary_data_size": pixels.size}}]}
    )  # fmt: skip
    return {
        "FP32 JSON": (json_body("FP32", (pixels / 255.0).ravel().tolist()), None),
        "UINT8 JSON": (json_body("UINT8", pixels.ravel().tolist()), None),
        "UINT8 binary": (header + pixels.tobytes(), len(header)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    for name, (body, header_length) in bodies(args.images).items():
        row: dict[str, Any] = {"bytes": len(body)}
        row["decode_infer_request"] = per_call_us(
            partial(decode_infer_request, body, header_length, 64), args.repeats
        )
        if header_length is None:
            parsed = loads_infer_request(body)["inputs"][0]["data"]
            datatype = "FP32" if name.startswith("FP32") else "UINT8"
            shape = [args.images, 32, 32, 3]
            row["simdjson_parse"] = per_call_us(partial(_simdjson_parse, body), args.repeats)
            row["loads_infer_request"] = per_call_us(
                partial(loads_infer_request, body), args.repeats
            )
            row["array_from_json"] = per_call_us(
                partial(array_from_json, parsed, datatype, shape, "x"), args.repeats
            )
            row["orjson_loads"] = per_call_us(partial(orjson.loads, body), args.repeats)
        results[name] = row
    publish("decode", {"images": args.images, "repeats": args.repeats, "bodies": results},
            args.no_write)  # fmt: skip
    print(json.dumps(results, indent=2))
