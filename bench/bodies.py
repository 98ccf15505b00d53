"""The request bodies the benchmarks send: the same seeded pixels as v2 JSON, the v2 binary
extension, ``:predict`` base64 PNGs and gRPC's raw tensors, so every figure sends the same
images."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image


def pixels(n: int) -> np.ndarray:
    """``n`` random 32x32 RGB images, UINT8, seeded by ``n`` (so 1 image is always the same)."""
    return np.random.default_rng(n).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def v2_json(n: int, datatype: str, outputs: list[str] | None = None) -> bytes:
    """A v2 JSON body of ``n`` images: FP32 in [0, 1] (4 decimals) or UINT8; ``outputs``: ask for
    those outputs only (what PyTriton answers)."""
    images = pixels(n)
    data: list[Any] = (
        np.round(images.astype(np.float32) / 255.0, 4).ravel().tolist()
        if datatype == "FP32"
        else images.ravel().tolist()
    )
    body: dict[str, Any] = {
        "inputs": [{"name": "images", "shape": [n, 32, 32, 3], "datatype": datatype, "data": data}]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(body).encode()


def v2_binary_parts(n: int) -> tuple[bytes, bytes]:
    """The binary tensor extension's JSON header and raw UINT8 bytes (binary outputs asked)."""
    raw = pixels(n).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [n, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header, raw


def v2_binary(n: int) -> tuple[bytes, tuple[str, ...]]:
    """The binary extension's body and the header line that says where its JSON part ends."""
    header, raw = v2_binary_parts(n)
    return header + raw, (f"Inference-Header-Content-Length: {len(header)}",)


def predict_png(n: int) -> bytes:
    """A ``:predict`` body of ``n`` base64 PNG instances, top 1."""
    instances = []
    for image in pixels(n):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
    return json.dumps({"instances": instances, "top_k": 1}).encode()
