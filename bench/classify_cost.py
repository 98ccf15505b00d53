"""What the classification extension costs (issue 31): the v2 codecs' per-request time for a
1-image request without ``classification`` (run it in a worktree of main too: the two should
agree within noise) and the time to format a classification, in process, no HTTP.

    python -m bench classify-cost [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import timeit
from collections.abc import Callable

import numpy as np
from tritonclient.grpc import service_pb2

from service.api.grpc import codec as grpc_codec
from service.api.rest import codec as rest_codec
from service.dataplane.types import InferResponse

CLASS_NAMES = [f"class{i}" for i in range(10)]


def codec_calls() -> dict[str, Callable[[], object]]:
    """One plain request each way: REST binary decode + encode, REST JSON encode, gRPC both."""
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": pixels.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + pixels.tobytes()
    probabilities = np.random.default_rng(0).random((1, 10), dtype=np.float32)
    response = InferResponse("m", "2", None, {"probabilities": probabilities})
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(**tensor)
    message.raw_input_contents.append(pixels.tobytes())
    message.outputs.add(name="probabilities")

    def rest_binary() -> None:
        rest_codec.decode_infer_request(body, len(header), 1024)
        rest_codec.encode_infer_response(response, {"probabilities": True})

    def grpc_both() -> None:
        grpc_codec.decode_infer_request(message, 1024)
        grpc_codec.encode_infer_response(response)

    return {
        "REST binary decode + encode": rest_binary,
        "REST JSON encode": lambda: rest_codec.encode_infer_response(response, {}),
        "gRPC decode + encode": grpc_both,
    }


def classify_calls() -> dict[str, Callable[[], object]]:
    """Formatting a classification of 1 and 256 images' 10 scores, k = 3 and 10."""
    from service.dataplane.classification import classify_rows

    rng = np.random.default_rng(0)
    calls: dict[str, Callable[[], object]] = {}
    for images, k in ((1, 3), (1, 10), (256, 3), (256, 10)):
        scores = rng.random((images, 10), dtype=np.float32)
        calls[f"classify {images} image(s), k={k}"] = functools.partial(
            classify_rows, scores, k, CLASS_NAMES
        )
    return calls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)


def main(args: argparse.Namespace) -> None:
    calls = codec_calls()
    with contextlib.suppress(ImportError):  # a worktree without the extension: its codecs only
        calls.update(classify_calls())
    for name, call in calls.items():
        number = args.calls if "256" not in name else max(args.calls // 200, 1)
        best = min(timeit.repeat(call, number=number, repeat=args.rounds)) / number
        print(f"{name}: {best * 1e6:,.2f} us (best of {args.rounds} x {number})")
