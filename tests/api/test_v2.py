"""Open Inference Protocol v2 routes, in process."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest

from service.api.rest import middleware
from tests.support.models import tiny_reference

pytestmark = pytest.mark.anyio


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def tensor(data: object, shape: list[int], datatype: str = "UINT8") -> dict[str, object]:
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}]}


async def test_health_and_server_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).status_code == 200
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "cifar-serve" and "binary_tensor_data" in meta["extensions"]


async def test_model_metadata_names_tensors_and_providers(client: httpx.AsyncClient) -> None:
    for url in ("/v2/models/tiny", "/v2/models/tiny/versions/2"):
        meta = (await client.get(url)).json()
        assert meta["versions"] == ["2"]
        assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
        assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
        assert meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
    assert (await client.get("/v2/models/tiny/ready")).status_code == 200
    assert (await client.get("/v2/models/tiny/versions/2/ready")).status_code == 200
    assert (await client.get("/v2/models/tiny/versions/1/ready")).status_code == 404
    assert (await client.get("/v2/models/nope/ready")).status_code == 404


async def test_infer_uint8_batch_matches_reference_in_order(client: httpx.AsyncClient) -> None:
    batch = images(3)
    response = await client.post(
        "/v2/models/tiny/infer", json=tensor(batch.tolist(), [3, 32, 32, 3])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "2"
    outputs = {o["name"]: o for o in body["outputs"]}
    probs = outputs["probabilities"]
    assert probs["datatype"] == "FP32" and probs["shape"] == [3, 10]
    got = np.array(probs["data"]).reshape(3, 10)
    np.testing.assert_allclose(got, tiny_reference(batch), atol=1e-5)


async def test_infer_fp32_in_unit_range_equals_uint8(client: httpx.AsyncClient) -> None:
    batch = images(2, seed=5)
    as_float = (batch / 255.0).ravel().tolist()
    request = {**tensor(as_float, [2, 32, 32, 3], "FP32"), "outputs": [{"name": "probabilities"}]}
    response = await client.post("/v2/models/tiny/versions/2/infer", json=request)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(2, 10), tiny_reference(batch), atol=1e-5
    )


async def test_infer_binary_extension_round_trip(client: httpx.AsyncClient) -> None:
    batch = images(2, seed=9)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [2, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    response = await client.post(
        "/v2/models/tiny/infer",
        content=header + batch.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = orjson.loads(response.content[:length])
    offset, arrays = length, {}
    for out in meta["outputs"]:
        size = out["parameters"]["binary_data_size"]
        arrays[out["name"]] = np.frombuffer(response.content[offset : offset + size], np.float32)
        offset += size
    np.testing.assert_allclose(
        arrays["probabilities"].reshape(2, 10), tiny_reference(batch), atol=1e-5
    )


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b'{"inputs": []}', 400, "'inputs' must be a non-empty list"),
        (orjson.dumps(tensor([0] * 4096, [1, 32, 32, 4])), 422, "does not fit [-1, 32, 32, 3]"),
        (orjson.dumps(tensor([0] * 10, [1, 32, 32, 3])), 422, "data holds 10 values"),
        (orjson.dumps(tensor([0] * 3072, [1, 32, 32, 3], "INT8")), 422, "datatype 'INT8'"),
        (orjson.dumps(tensor([300] * 3072, [1, 32, 32, 3])), 422, "0..255"),
        (orjson.dumps(tensor(["a"] * 3072, [1, 32, 32, 3])), 422, "found strings"),
        (orjson.dumps(tensor([2.0] * 3072, [1, 32, 32, 3], "FP32")), 422, "in 0..1"),
        (orjson.dumps(tensor([[1, 2], [3]], [1, 32, 32, 3])), 422, "data holds 3 values"),
        (orjson.dumps(tensor([0] * 3072, [1, -32, 32, 3])), 422, "negative dimension"),
        (orjson.dumps(tensor([0] * 3072 * 9, [9, 32, 32, 3])), 413, "limit of 8"),
        (
            orjson.dumps(
                {"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": [0]}]}
            ),
            422,
            "takes one input 'images'",
        ),
        (
            orjson.dumps({**tensor([0] * 3072, [1, 32, 32, 3]), "outputs": [{"name": "x"}]}),
            422,
            "unknown output",
        ),
    ],
)
async def test_infer_refuses_bad_requests_with_a_message(
    client: httpx.AsyncClient, body: bytes, status: int, message: str
) -> None:
    response = await client.post(
        "/v2/models/tiny/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert (await client.get("/v2/health/ready")).status_code == 200


async def test_unknown_model_version_and_media_type(client: httpx.AsyncClient) -> None:
    body = orjson.dumps(tensor([0] * 3072, [1, 32, 32, 3]))
    for url, status in [
        ("/v2/models/nope/infer", 404),
        ("/v2/models/tiny/versions/7/infer", 404),
        ("/v2/models/tiny/versions/abc/infer", 404),
        ("/v2/models/tiny/versions/1/infer", 404),  # on disk, not served
        ("/v2/models/tiny/versions/%D9%A2/infer", 404),  # "\u0662": Arabic-Indic 2, not 2
        ("/v2/models/tiny/versions/%EF%BC%92/infer", 404),  # fullwidth 2
    ]:
        response = await client.post(url, content=body)
        assert response.status_code == status, url
        assert response.json()["error"]
    assert (await client.get("/v2/models/tiny/versions/%D9%A2")).status_code == 404
    assert (await client.get("/v2/models/tiny/versions/%D9%A2/ready")).status_code == 404
    versioned = orjson.dumps({**tensor([0] * 3072, [1, 32, 32, 3]), "model_version": "\u0662"})
    response = await client.post("/v2/models/tiny/infer", content=versioned)
    assert response.status_code == 400 and "model_version" in response.json()["error"]
    # A superscript digit in the binary extension's length: a 400, not int()'s ValueError (500).
    response = await client.post(
        "/v2/models/tiny/infer",
        content=body,
        headers=[(b"Inference-Header-Content-Length", "\u00b2".encode("latin-1"))],
    )
    assert response.status_code == 400, response.text
    response = await client.post(
        "/v2/models/tiny/infer", content=body, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


async def test_infer_is_counted_under_its_route_templates(client: httpx.AsyncClient) -> None:
    """The fast path records its requests as the routes that document it, 413s included."""
    body = tensor(images(1).tolist(), [1, 32, 32, 3])
    assert (await client.post("/v2/models/tiny/infer", json=body)).status_code == 200
    assert (await client.post("/v2/models/tiny/versions/2/infer", json=body)).status_code == 200
    too_large = {"Content-Length": "999999999", "Content-Type": "application/json"}
    refused = await client.post("/v2/models/tiny/infer", content=b"{}", headers=too_large)
    assert refused.status_code == 413 and refused.headers["connection"] == "close"
    text = (await client.get("/metrics")).text
    for endpoint, status in [
        ("/v2/models/{name}/infer", "200"),
        ("/v2/models/{name}/versions/{version}/infer", "200"),
        ("/v2/models/{name}/infer", "413"),
    ]:
        assert f'endpoint="{endpoint}",method="POST",status="{status}"}} 1.0' in text, endpoint


async def test_infer_routes_answer_other_methods_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/models/tiny/infer")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


async def test_binary_bytes_past_what_the_models_input_takes_are_refused_on_their_shape(
    client: httpx.AsyncClient,
) -> None:
    """Before they are split element by element (60 MB of empty BYTES took 6-12 s)."""
    rows = 8 * 3072 + 1  # one more than MAX_IMAGES_PER_REQUEST (8 here) images hold
    header = orjson.dumps(
        {"inputs": [{"name": "images", "shape": [1, rows], "datatype": "BYTES",
                     "parameters": {"binary_data_size": 4 * rows}}]}
    )  # fmt: skip
    response = await client.post(
        "/v2/models/tiny/infer",
        content=header + b"\0" * (4 * rows),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 413, response.text
    assert f"holds {rows} values, more than the model's input takes" in response.json()["error"]


async def test_an_error_escaping_the_fast_paths_middleware_is_a_500_with_its_message(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path's answer maps its own errors; something unforeseen in the middleware it
    wraps itself in (the version lease here) is answered 500 as FastAPI's ServerErrorMiddleware
    answers a route's, not left to the server's plain-text fallback, and the server serves on."""

    def broken() -> None:
        raise RuntimeError("a bug in the lease")

    body = tensor(images(1).tolist(), [1, 32, 32, 3])
    monkeypatch.setattr(middleware, "request_scope", broken)
    response = await client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}
    monkeypatch.undo()
    assert (await client.post("/v2/models/tiny/infer", json=body)).status_code == 200
