"""The KServe SDK's clients, one call per process: its gRPC messages and tritonclient's (which the
server uses) declare the same protobuf symbols, so the two cannot be imported in one interpreter,
as a user's client and our server never are.

    python -m tests.support.kserve_client CALL REST_URL GRPC_TARGET PIXELS.npy IMAGES.json

prints ``{"model_name", "id", "probabilities"}`` (v2 calls) or the v1 answer as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.infer_type import RequestedOutput

from tests.support.interop import VERSION

MODEL = "cifar10_cnn"


def request(pixels: np.ndarray, binary: bool, version: str | None = None) -> InferRequest:
    tensor = InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return InferRequest(
        MODEL,
        [tensor],
        request_id="interop-1",
        request_outputs=[RequestedOutput("probabilities")],
        model_version=version,
    )


def v2_answer(response: Any) -> dict[str, Any]:
    (output,) = response.outputs
    assert output.name == "probabilities", output.name
    return {
        "model_name": response.model_name,
        "id": response.id,
        "probabilities": output.as_numpy().tolist(),
    }


async def rest_v2(url: str, pixels: np.ndarray, binary: bool) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        assert await client.is_server_ready(url)
        assert await client.is_model_ready(url, MODEL)
        return v2_answer(await client.infer(url, request(pixels, binary), MODEL))
    finally:
        await client.close()


async def rest_v1(url: str, instances: list[Any]) -> Any:
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    try:
        return await client.infer(url, {"instances": instances}, MODEL)
    finally:
        await client.close()


async def grpc(target: str, pixels: np.ndarray, version: str | None) -> dict[str, Any]:
    client = InferenceGRPCClient(target, retries=2)
    try:
        assert await client.is_server_ready()
        return v2_answer(await client.infer(request(pixels, binary=True, version=version)))
    finally:
        await client.close()


def main(argv: list[str]) -> None:
    call, rest_url, grpc_target, pixels_path, images_path = argv
    pixels = np.load(pixels_path)
    instances = json.loads(Path(images_path).read_text())
    calls = {
        "rest-v2-json": lambda: rest_v2(rest_url, pixels, binary=False),
        "rest-v2-binary": lambda: rest_v2(rest_url, pixels, binary=True),
        "rest-v1": lambda: rest_v1(rest_url, instances),
        "grpc": lambda: grpc(grpc_target, pixels, None),
        "grpc-version": lambda: grpc(grpc_target, pixels, str(VERSION)),
    }
    print(json.dumps(asyncio.run(calls[call]())))


if __name__ == "__main__":
    main(sys.argv[1:])
