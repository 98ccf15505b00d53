"""Tensor abuse on v2 infer and v1 :predict: each request is a 4xx
whose message says what is wrong, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

INFER = "/v2/models/tiny/infer"
PIXELS = 32 * 32 * 3


def tensor(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "images",
        "shape": [1, 32, 32, 3],
        "datatype": "UINT8",
        "data": [0] * PIXELS,
    }
    return {**base, **changes}


def body(**tensor_changes: Any) -> bytes:
    return json.dumps({"inputs": [tensor(**tensor_changes)]}).encode()


# (request body, status, words the message must hold)
JSON_CASES: dict[str, tuple[bytes, int, str]] = {
    "data shorter than shape": (body(data=[0] * 10), 422, "10"),
    "data longer than shape": (body(data=[0] * (PIXELS + 1)), 422, "3073"),
    "negative dimension": (body(shape=[-1, 32, 32, 3]), 422, "negative"),
    "huge batch": (body(shape=[10**9, 32, 32, 3]), 413, "limit"),
    "huge product": (body(shape=[1, 2**40, 2**40, 3]), 413, "too large"),
    "over 64-bit dimension": (body(shape=[1, 2**70, 32, 3]), 400, "shape"),
    "fractional dimension": (body(shape=[1, 32.5, 32, 3]), 400, "integers"),
    "string dimension": (body(shape=[1, "32", 32, 3]), 400, "integers"),
    "wrong rank": (body(shape=[1, PIXELS]), 422, "does not fit"),
    "wrong image size": (body(shape=[1, 16, 64, 3]), 422, "does not fit"),
    "unknown datatype": (body(datatype="FP64"), 422, "FP64"),
    "datatype not a string": (body(datatype=["UINT8"]), 422, "datatype"),
    "int64 pixels": (body(datatype="INT64"), 422, "INT64"),
    "uint8 over 255": (body(data=[256] * PIXELS), 422, "0..255"),
    "uint8 negative": (body(data=[-1] * PIXELS), 422, "0..255"),
    "fp32 over 1": (body(datatype="FP32", data=[2.0] * PIXELS), 422, "0..1"),
    "floats as uint8": (body(data=[0.5] * PIXELS), 422, "integers"),
    "mixed types": (body(data=[0, "1", None, True] * (PIXELS // 4)), 422, "UINT8"),
    "nested objects in data": (body(data=[{"a": 1}] * PIXELS), 422, "UINT8"),
    "ragged nesting": (body(data=[[0] * 10, [0] * (PIXELS - 11)]), 422, "3071"),
    "no inputs": (b'{"inputs": []}', 400, "inputs"),
    "inputs not a list": (b'{"inputs": {"name": "images"}}', 400, "inputs"),
    "tensor not an object": (b'{"inputs": [1]}', 400, "object"),
    "wrong input name": (body(name="pixels"), 422, "pixels"),
    "two inputs": (
        json.dumps({"inputs": [tensor(), tensor(name="other")]}).encode(),
        422,
        "one input",
    ),
    "unknown output": (
        json.dumps({"inputs": [tensor()], "outputs": [{"name": "nope"}]}).encode(),
        422,
        "nope",
    ),
    "unknown top-level field": (
        json.dumps({"inputs": [tensor()], "input": []}).encode(),
        400,
        "unknown field(s) ['input']",
    ),
    "unknown tensor field": (body(shapes=[1]), 400, "unknown field(s) ['shapes']"),
    "id not a string": (json.dumps({"inputs": [tensor()], "id": 7}).encode(), 400, "'id'"),
    "top level array": (b"[1, 2, 3]", 400, "object"),
    "top level string": (b'"inputs"', 400, "object"),
    "empty body": (b"", 400, "empty"),
    "malformed json": (b'{"inputs": [', 400, "malformed"),
    "NaN literal": (body(datatype="FP32").replace(b"0]", b"NaN]"), 400, "malformed"),
    "Infinity literal": (body(datatype="FP32").replace(b"0]", b"Infinity]"), 400, "malformed"),
    "huge exponent": (body(datatype="FP32").replace(b"0]", b"1e999]"), 400, "malformed"),
    "non-UTF-8 body": (b'{"inputs": "\xff\xfe\xfd"}', 400, "malformed"),
    "latin-1 body": ('{"inputs": [{"name": "é"}]}'.encode("latin-1"), 400, "malformed"),
    "deep nesting": (b'{"inputs": [{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", 400, ""),
    "deep nesting, objects": (b'{"a": ' * 30_000 + b"1" + b"}" * 30_000, 400, ""),
}


@pytest.mark.parametrize("case", JSON_CASES.values(), ids=JSON_CASES.keys())
async def test_tensor_abuse_is_a_4xx_with_a_message(
    client: httpx.AsyncClient, case: tuple[bytes, int, str]
) -> None:
    content, status, words = case
    response = await client.post(
        INFER, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert message and words in message


async def test_nan_and_infinity_in_binary_fp32_are_refused(client: httpx.AsyncClient) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        values = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
        values[0, 3, 4, 1] = bad
        raw = values.tobytes()
        header = json.dumps(
            {
                "inputs": [
                    tensor(datatype="FP32", data=None, parameters={"binary_data_size": len(raw)})
                ]
            }
        ).encode()
        response = await client.post(
            INFER,
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 422, response.text
        assert "0..1" in response.json()["error"]


@pytest.mark.parametrize(
    ("header_length", "raw", "words"),
    [
        ("abc", b"", "not a number"),
        ("999999", b"", "999999"),
        (None, b"\x00" * 100, "binary data no input claims"),
    ],
)
async def test_binary_extension_framing_errors(
    client: httpx.AsyncClient, header_length: str | None, raw: bytes, words: str
) -> None:
    header = body()
    response = await client.post(
        INFER,
        content=header + raw,
        headers={"Inference-Header-Content-Length": header_length or str(len(header))},
    )
    assert 400 <= response.status_code < 500, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "image/png",
    ],
)
async def test_wrong_content_types_are_a_415(client: httpx.AsyncClient, content_type: str) -> None:
    for path in (INFER, "/v1/models/tiny:predict"):
        response = await client.post(path, content=body(), headers={"content-type": content_type})
        assert response.status_code == 415, (path, response.text)
        assert "application/json" in response.json()["error"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"instances": [[[[0, 0, 0]] * 32] * 31]}, "instance 0"),
        ({"instances": []}, "non-empty"),
        ({"instances": [{"b64": 5}]}, "b64"),
        ({"instances": [[[[0, 0, 0]] * 32] * 32], "top_k": 0}, "top_k"),
        ({"instances": [[[[0, 0, 0]] * 32] * 32], "top_k": "3"}, "top_k"),
        ({"instances": [[[[0, 0, 0]] * 32] * 32], "instance": []}, "unknown field(s)"),
        ({"instances": [[[[999, 0, 0]] * 32] * 32]}, "instance 0"),
    ],
)
async def test_v1_predict_abuse(
    client: httpx.AsyncClient, payload: dict[str, Any], words: str
) -> None:
    response = await client.post("/v1/models/tiny:predict", json=payload)
    assert 400 <= response.status_code < 500, response.text
    assert words in response.json()["error"]


async def test_unknown_models_and_versions_from_urls(client: httpx.AsyncClient) -> None:
    for path in (
        "/v2/models/..%2F..%2Fetc/infer",
        "/v2/models/tiny/versions/-1/infer",
        "/v2/models/tiny/versions/1e3/infer",
        "/v2/models/tiny/versions/99999999999999999999/infer",
        "/v2/models/%00/infer",
        "/v2/models/" + "a" * 5000 + "/infer",
    ):
        response = await client.post(path, content=body())
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]
