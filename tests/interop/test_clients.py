"""Each protocol driven by the clients people already use, against a real server: tritonclient
(HTTP JSON and binary, gRPC), the KServe SDK (REST v1 and v2, JSON and binary, and gRPC), and TF
Serving's REST request bodies as its documentation writes them. Every answer is checked against
the in-process onnxruntime result for the same real CIFAR-10 test images.

The table in docs/api.md names the test behind each client and call.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests.support.interop import MODEL, ROOT, TestImage
from tests.support.servers import Running

ATOL = 1e-5  # float32 softmax: the same graph and session options, different batch splits


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def top1(response: dict[str, Any]) -> list[int]:
    return [row[0]["index"] for row in response["predictions"]]


# --- tritonclient ------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_infer(
    server: Running, pixels: np.ndarray, expected: np.ndarray, binary: bool
) -> None:
    client = triton_http.InferenceServerClient(server.address)
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer(MODEL, [tensor], outputs=wanted)
        assert_same(result.as_numpy("probabilities"), expected)
    finally:
        client.close()


def test_tritonclient_grpc_infer(server: Running, pixels: np.ndarray, expected: np.ndarray) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        wanted = [triton_grpc.InferRequestedOutput("probabilities")]
        result = client.infer(MODEL, [tensor], outputs=wanted)
        probabilities = result.as_numpy("probabilities")
        assert probabilities is not None
        assert_same(probabilities, expected)
    finally:
        client.close()


# --- the KServe SDK (in a process of its own: see tests/support/kserve_client.py) -------------


@pytest.fixture(scope="module")
def kserve_inputs(
    tmp_path_factory: pytest.TempPathFactory, cifar_images: list[TestImage], pixels: np.ndarray
) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kserve")
    np.save(folder / "pixels.npy", pixels)
    b64 = [{"b64": base64.b64encode(image.jpeg).decode()} for image in cifar_images]
    (folder / "instances.json").write_text(json.dumps(b64))
    return folder / "pixels.npy", folder / "instances.json"


def kserve_call(call: str, server: Running, inputs: tuple[Path, Path]) -> Any:
    command = [sys.executable, "-m", "tests.support.kserve_client", call, server.url]
    command += [server.grpc_url, str(inputs[0]), str(inputs[1])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("call", ["rest-v2-json", "rest-v2-binary", "grpc", "grpc-version"])
def test_kserve_sdk_infer(
    server: Running, kserve_inputs: tuple[Path, Path], expected: np.ndarray, call: str
) -> None:
    answer = kserve_call(call, server, kserve_inputs)
    assert answer["model_name"] == MODEL and answer["id"] == "interop-1"
    assert_same(np.array(answer["probabilities"], dtype=np.float32), expected)


def test_kserve_sdk_rest_v1_predict(
    server: Running, kserve_inputs: tuple[Path, Path], expected: np.ndarray
) -> None:
    answer = kserve_call("rest-v1", server, kserve_inputs)
    assert top1(answer) == expected.argmax(axis=1).tolist()


# --- TF Serving's REST request bodies ----------------------------------------------------------


def tf_serving_bodies(cifar_images: list[TestImage], pixels: np.ndarray) -> dict[str, Any]:
    """Request bodies as TF Serving's REST API documentation writes them, for our one input."""
    b64 = [{"b64": base64.b64encode(image.jpeg).decode()} for image in cifar_images]
    rows = pixels.tolist()
    return {
        "row, signature_name": {"signature_name": "serving_default", "instances": rows},
        "row, named input": {"instances": [{"images": row} for row in rows]},
        "row, *_bytes b64": {"instances": [{"image_bytes": b} for b in b64]},
        "row, bare b64": {"instances": b64},
        "columnar": {"signature_name": "serving_default", "inputs": rows},
        "columnar, named input": {"inputs": {"images": rows}},
        "columnar, *_bytes b64": {"inputs": {"image_bytes": b64}},
    }


def test_tf_serving_request_bodies(
    server: Running, cifar_images: list[TestImage], pixels: np.ndarray, expected: np.ndarray
) -> None:
    url = f"{server.url}/v1/models/{MODEL}:predict"
    want = expected.argmax(axis=1).tolist()
    with httpx.Client(timeout=30) as http:
        for name, body in tf_serving_bodies(cifar_images, pixels).items():
            response = http.post(url, json=body)
            assert response.status_code == 200, (name, response.text)
            got = response.json()
            assert top1(got) == want, name
            best = [row[0]["probability"] for row in got["predictions"]]
            np.testing.assert_allclose(best, expected.max(axis=1), atol=ATOL, err_msg=name)
