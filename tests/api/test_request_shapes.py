"""Request shapes that real clients send, in process: ``model_name`` / ``model_version`` in a v2
body (the KServe SDK), TF Serving's ``:predict`` forms, and what happens to unknown fields."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.apps import app_client, make_settings
from tests.support.models import make_model_repo, tiny_reference

pytestmark = pytest.mark.anyio

INFER = "/v2/models/tiny/infer"
PREDICT = "/v1/models/tiny:predict"


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def v2_body(batch: np.ndarray, **fields: Any) -> dict[str, Any]:
    tensor = {"name": "images", "shape": list(batch.shape), "datatype": "UINT8"}
    return {"inputs": [{**tensor, "data": batch.ravel().tolist()}], **fields}


def png_b64(image: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def v2_probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = {o["name"]: o for o in response.json()["outputs"]}["probabilities"]
    return np.array(out["data"]).reshape(out["shape"])


def top_classes(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row[0]["index"] for row in response.json()["predictions"]]


async def test_v2_body_may_name_the_model_and_version_of_the_url(
    client: httpx.AsyncClient,
) -> None:
    batch = images(2)
    for fields in (
        {"model_name": "tiny"},
        {"model_name": "tiny", "model_version": "2"},
        {"model_version": ""},  # empty: not given
    ):
        response = await client.post(INFER, json=v2_body(batch, **fields))
        np.testing.assert_allclose(v2_probabilities(response), tiny_reference(batch), atol=1e-5)
    response = await client.post(
        "/v2/models/tiny/versions/2/infer", json=v2_body(batch, model_version="2")
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("url", "fields", "words"),
    [
        (INFER, {"model_name": "other"}, ["'other'", "'tiny'"]),
        ("/v2/models/tiny/versions/2/infer", {"model_version": "1"}, ["'1'", "'2'"]),
        (INFER, {"model_version": 2}, ["model_version"]),
        (INFER, {"model_version": "0"}, ["model_version"]),
        (INFER, {"model_name": 7}, ["model_name"]),
    ],
)
async def test_v2_body_contradicting_the_url_is_a_400_naming_both(
    client: httpx.AsyncClient, url: str, fields: dict[str, Any], words: list[str]
) -> None:
    response = await client.post(url, json=v2_body(images(1), **fields))
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert all(word in message for word in words), message


async def test_v2_body_version_picks_the_version_the_url_leaves_open(tmp_path: Path) -> None:
    settings = make_settings(make_model_repo(tmp_path), version_policy="all")
    async with app_client(settings) as http:
        for version in ("1", "2"):
            response = await http.post(INFER, json=v2_body(images(1), model_version=version))
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == version
        response = await http.post(INFER, json=v2_body(images(1), model_version="9"))
        assert response.status_code == 404, response.text


async def test_unknown_top_level_fields_are_ignored_but_misspelt_ones_are_a_400(
    client: httpx.AsyncClient,
) -> None:
    batch = images(1)
    harmless = {"request_tag": "x", "priority": 1, "timeout_ms": 50}
    response = await client.post(INFER, json=v2_body(batch, **harmless))
    np.testing.assert_allclose(v2_probabilities(response), tiny_reference(batch), atol=1e-5)
    for typo, meant in (("output", "outputs"), ("Parameters", "parameters"), ("ID", "id")):
        response = await client.post(INFER, json=v2_body(batch, **{typo: []}))
        assert response.status_code == 400, (typo, response.text)
        message = response.json()["error"]
        assert f"unknown field(s) ['{typo}']" in message and repr(meant) in message
    # tensors stay strict: a misspelt tensor field is a 400 whatever its name
    body = v2_body(batch)
    body["inputs"][0]["extra"] = 1
    assert (await client.post(INFER, json=body)).status_code == 400


async def test_predict_accepts_every_tf_serving_request_shape(client: httpx.AsyncClient) -> None:
    batch = images(3, seed=4)
    expected = tiny_reference(batch).argmax(axis=1).tolist()
    pixels = batch.tolist()
    b64 = [{"b64": png_b64(image)} for image in batch]
    bodies: dict[str, dict[str, Any]] = {
        "row": {"instances": pixels},
        "row, b64": {"instances": b64},
        "row, signature_name": {"signature_name": "serving_default", "instances": pixels},
        "row, named input": {"instances": [{"images": p} for p in pixels]},
        "row, named b64": {"instances": [{"images": b} for b in b64]},
        "row, *_bytes": {"instances": [{"image_bytes": b} for b in b64]},
        "columnar": {"inputs": pixels},
        "columnar, signature_name": {"signature_name": "serving_default", "inputs": pixels},
        "columnar, named input": {"inputs": {"images": pixels}},
        "columnar, *_bytes": {"inputs": {"image_bytes": b64}},
        "harmless extra field": {"instances": pixels, "client": "curl"},
    }
    for name, body in bodies.items():
        response = await client.post(PREDICT, json=body)
        assert top_classes(response) == expected, name
    one = await client.post(PREDICT, json={"inputs": {"image_bytes": b64[0]}})
    assert top_classes(one) == expected[:1]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"signature_name": "predict", "instances": [[0]]}, 400, "'serving_default'"),
        ({"instances": [], "inputs": []}, 400, "not both"),
        ({"signature_name": "serving_default"}, 400, "'instances'"),
        ({"inputs": "pixels"}, 400, "'inputs'"),
        ({"inputs": {"pixels": [[0]]}}, 422, "'pixels'"),
        ({"inputs": {"images": [], "labels": []}}, 400, "'images'"),
        ({"instances": [{"pixels": [[0]]}]}, 422, "instance 0"),
        ({"instances": [{"images": [[0, 0, 0]]}]}, 422, "instance 0: pixel array"),
        ({"instances": [{"image_bytes": {"b64": "!!!"}}]}, 422, "not valid base64"),
        ({"instance": [], "inputs": [[0]]}, 400, "unknown field(s) ['instance']"),
        ({"instances": [[0]], "topk": 3}, 400, "'top_k'"),
    ],
)
async def test_predict_refuses_defects_in_tf_serving_shapes(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, words: str
) -> None:
    response = await client.post(PREDICT, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


async def test_predict_accepts_the_signature_name_the_card_gives(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    card = repo / "tiny" / "2" / "card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "signature_name": "classify"}))
    async with app_client(make_settings(repo)) as http:
        pixels = images(1).tolist()
        ok = await http.post(PREDICT, json={"signature_name": "classify", "instances": pixels})
        assert ok.status_code == 200, ok.text
        default = await http.post(
            PREDICT, json={"signature_name": "serving_default", "instances": pixels}
        )
        assert default.status_code == 200, default.text  # TF Serving's default key, too
        other = await http.post(PREDICT, json={"signature_name": "predict", "instances": pixels})
        assert other.status_code == 400 and "'classify'" in other.json()["error"]


async def test_openapi_documents_the_accepted_shapes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    predict = spec["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]
    schema = predict["content"]["application/json"]["schema"]
    assert {"instances", "inputs", "signature_name", "top_k"} <= set(schema["properties"])
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    schema = infer["content"]["application/json"]["schema"]
    assert {"model_name", "model_version", "inputs", "outputs"} <= set(schema["properties"])
    assert "ignored" in schema["description"]
