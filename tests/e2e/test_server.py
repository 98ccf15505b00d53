"""End to end: a real uvicorn server on a free loopback port, plain httpx and tritonclient."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.http as triton
from PIL import Image

from service.settings import Settings
from tests.support.models import make_model_repo, tiny_reference
from tests.support.servers import running_server, server_process, service_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a uvicorn server running the app in a thread (CUDA asked for, absent)."""
    repo = make_model_repo(tmp_path_factory.mktemp("e2e"))
    settings = Settings(
        model_repository=repo,
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        max_images_per_request=64,
        max_request_bytes=2_000_000,
    )
    with running_server(settings, grpc=False) as running:
        yield running.address


def encode(pixels: np.ndarray, mode: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_tritonclient_health_metadata_and_batch_infer(server: str) -> None:
    client = triton.InferenceServerClient(url=server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_server_metadata()["name"] == "cifar-serve"
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"][0]["shape"] == [-1, 32, 32, 3]
    # CUDA was asked for but this onnxruntime has none: the fallback is what metadata reports.
    providers = meta["parameters"]["execution_providers"]
    assert providers[-1] == "CPUExecutionProvider"
    batch = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    for binary in (False, True):
        tensor = triton.InferInput("images", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("tiny", [tensor], outputs=outputs)
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), tiny_reference(batch), atol=1e-5
        )
    # Default request: binary input and all outputs binary, FP32 pixels, an explicit version.
    tensor = triton.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy((batch / 255.0).astype(np.float32))
    result = client.infer("tiny", [tensor], model_version="2")
    np.testing.assert_allclose(result.as_numpy("probabilities"), tiny_reference(batch), atol=1e-5)
    assert result.as_numpy("logits").shape == (16, 10)
    client.close()


def test_every_endpoint_answers_over_http(server: str) -> None:
    base = f"http://{server}"
    with httpx.Client(base_url=base, timeout=10) as http:
        for url in [
            "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/tiny",
            "/v2/models/tiny/versions/2", "/v2/models/tiny/ready",
            "/v2/models/tiny/versions/2/ready", "/v1/models", "/v1/models/tiny",
            "/v1/models/cifar10_cnn/layers", "/metrics", "/openapi.json", "/docs",
        ]:  # fmt: skip
            assert http.get(url).status_code == 200, url
        text = http.get("/v1/models/cifar10_cnn/layers", params={"format": "text"}).text
        assert "Total params: 122,570" in text


@pytest.mark.parametrize(
    ("mode", "fmt", "size"),
    [("RGB", "PNG", (32, 32)), ("RGBA", "PNG", (300, 200)), ("L", "JPEG", (64, 48)),
     ("RGB", "JPEG", (1024, 768)), ("P", "PNG", (31, 33)), ("I;16", "PNG", (20, 20))],
)  # fmt: skip
def test_multipart_files_of_several_sizes_and_modes(
    server: str, mode: str, fmt: str, size: tuple[int, int]
) -> None:
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), np.uint8)
    files = [
        ("file", (f"x.{fmt.lower()}", encode(pixels, mode, fmt), f"image/{fmt.lower()}")),
        ("file", ("y.png", encode(pixels[:32, :32], "RGB", "PNG"), "image/png")),
    ]
    response = httpx.post(f"http://{server}/v1/models/tiny:classify", files=files, timeout=10)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    expected = int(np.argmax(tiny_reference(pixels[None, :32, :32])[0]))
    assert predictions[1][0]["index"] == expected


def test_errors_keep_the_server_answering(server: str) -> None:
    base = f"http://{server}"
    cases = [
        ("POST", "/v2/models/tiny/infer", {"content": b"{", "headers": {}}, 400, "malformed"),
        ("POST", "/v2/models/nope/infer", {"json": {"inputs": []}}, 404, "unknown model"),
        ("GET", "/v2/models/tiny/versions/9", {}, 404, "no version 9"),
        ("POST", "/v1/models/tiny:predict", {"content": b"x" * 3_000_000}, 413, "limit"),
        (
            "POST",
            "/v1/models/tiny:predict",
            {"content": b"{}", "headers": {"Content-Type": "text/csv"}},
            415,
            "json",
        ),
        ("POST", "/v1/models/tiny:predict", {"json": {"instances": [[1, 2]]}}, 422, "instance 0"),
        ("POST", "/v1/models/tiny:classify", {"files": {"file": b"junk"}}, 422, "image 0"),
    ]
    with httpx.Client(base_url=base, timeout=10) as http:
        for method, url, kwargs, status, message in cases:
            response = http.request(method, url, **kwargs)  # type: ignore[arg-type]
            assert response.status_code == status, (url, response.text)
            assert (
                message in response.json()["error"].lower() or message in response.json()["error"]
            )
            assert http.get("/v2/health/ready").status_code == 200


def test_service_module_runs_and_never_imports_torch(tmp_path: Path) -> None:
    """``python -m service --port 0 --grpc-port 0`` serves REST and gRPC; importing the service
    never pulls in torch."""
    code = (
        "import sys; from service.api.rest.app import create_app; "
        "from service.settings import Settings; "
        "import service.__main__; create_app(Settings()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "PROVIDERS": "CPUExecutionProvider"}
    with server_process(service_command(), env=env, timeout_s=30) as server:
        assert server.grpc_port > 0, "no gRPC port in the log"
        assert httpx.get(f"{server.url}/v2/models/tiny/ready").status_code == 200
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready("tiny")
        client.close()
