"""Plain REST: :predict, :classify, listings, the card, layers, metrics, errors, OpenAPI."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api.rest.app import create_app
from service.api.rest.routes import v1
from service.core.card import ModelCard
from service.engine.repository import ModelRepository
from service.engine.runtime import ModelRuntime
from tests.support.apps import make_settings
from tests.support.models import make_model_repo, tiny_reference, write_model

pytestmark = pytest.mark.anyio


def png(pixels: np.ndarray, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.full((size[1], size[0], 3), color, dtype=np.uint8)


def expected_top(pixels: np.ndarray) -> int:
    return int(np.argmax(tiny_reference(pixels[None])[0]))


async def test_predict_pixel_arrays_and_b64_in_order(client: httpx.AsyncClient) -> None:
    red, blue = solid((250, 10, 10)), solid((10, 10, 250))
    instances = [red.tolist(), {"b64": base64.b64encode(png(blue)).decode()}, red.tolist()]
    response = await client.post("/v1/models/tiny:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3 and all(len(p) == 5 for p in predictions)  # default top_k
    assert [p[0]["index"] for p in predictions] == [
        expected_top(red),
        expected_top(blue),
        expected_top(red),
    ]
    first = predictions[0]
    reference = tiny_reference(red[None])[0]
    assert first[0]["name"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck"][first[0]["index"]]  # fmt: skip
    assert first[0]["probability"] == pytest.approx(float(reference.max()), abs=1e-5)
    assert [p["probability"] for p in first] == sorted(
        (p["probability"] for p in first), reverse=True
    )


async def test_predict_top_k_from_query_or_body(client: httpx.AsyncClient) -> None:
    instances = [solid((0, 128, 0)).tolist()]
    body = (
        await client.post("/v1/models/tiny:predict", json={"instances": instances, "top_k": 2})
    ).json()
    assert len(body["predictions"][0]) == 2
    response = await client.post("/v1/models/tiny:predict?top_k=10", json={"instances": instances})
    assert len(response.json()["predictions"][0]) == 10
    response = await client.post("/v1/models/tiny:predict?top_k=0", json={"instances": instances})
    assert response.status_code == 422 and "top_k" in response.json()["error"]


@pytest.mark.parametrize(
    ("instances", "status", "message"),
    [
        ([], 400, "non-empty list"),
        ([[[0, 0, 0]]], 422, "instance 0: pixel array of shape [1, 3]"),
        ([np.zeros((32, 32, 3), int).tolist(), [[1]]], 422, "instance 1"),
        ([{"b64": "!!!"}], 422, "instance 0: 'b64' is not valid base64"),
        (
            [{"b64": base64.b64encode(b"not an image").decode()}],
            422,
            "instance 0: not a decodable image",
        ),
        ([{"image": "x"}], 422, "needs a 'b64' string"),
        ([42], 422, "instance 0: expected a 32x32x3 pixel array"),
        ([np.full((32, 32, 3), 256).tolist()], 422, "0..255"),
        ([np.zeros((32, 32, 3), int).tolist()] * 9, 413, "limit of 8"),
    ],
)
async def test_predict_names_the_bad_instance(
    client: httpx.AsyncClient, instances: list[object], status: int, message: str
) -> None:
    response = await client.post("/v1/models/tiny:predict", json={"instances": instances})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("mode", "fmt", "size"),
    [
        ("RGB", "PNG", (32, 32)),
        ("RGB", "JPEG", (640, 480)),
        ("L", "PNG", (17, 45)),
        ("RGBA", "PNG", (64, 64)),
        ("P", "GIF", (100, 30)),
        ("I;16", "PNG", (40, 40)),
        ("CMYK", "JPEG", (50, 50)),
    ],
)
async def test_classify_images_of_any_mode_and_size(
    client: httpx.AsyncClient, mode: str, fmt: str, size: tuple[int, int]
) -> None:
    data = png(solid((200, 40, 40), size), mode, fmt)
    files = [("file", (f"a.{fmt.lower()}", data)), ("file", ("b.png", png(solid((0, 0, 255)))))]
    response = await client.post("/v1/models/tiny:classify?top_k=1", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and len(predictions[0]) == 1
    assert predictions[1][0]["index"] == expected_top(solid((0, 0, 255)))


async def test_classify_resizes_as_documented(client: httpx.AsyncClient) -> None:
    # A 64x64 image of one colour resizes to the same colour: same answer as the 32x32 image.
    small = await client.post("/v1/models/tiny:classify", files={"file": png(solid((9, 99, 199)))})
    large = await client.post(
        "/v1/models/tiny:classify", files={"file": png(solid((9, 99, 199), (64, 64)))}
    )
    assert small.json()["predictions"] == large.json()["predictions"]


async def test_classify_errors(client: httpx.AsyncClient) -> None:
    url = "/v1/models/tiny:classify"
    bad = await client.post(url, files=[("file", ("ok.png", png(solid((1, 2, 3))))),
                                        ("file", ("bad.png", b"garbage"))])  # fmt: skip
    assert bad.status_code == 422 and "image 1 (file=bad.png)" in bad.json()["error"]
    empty = await client.post(url, files={"file": ("e.png", b"")})
    assert empty.status_code == 422 and "empty" in empty.json()["error"]
    no_files = await client.post(url, data={"x": "1"}, files={})
    assert no_files.status_code in (400, 415)
    wrong_type = await client.post(url, content=b"{}", headers={"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    too_many = await client.post(url, files=[("file", ("a.png", png(solid((0, 0, 0)))))] * 9)
    assert too_many.status_code == 413, too_many.text
    truncated = png(solid((1, 2, 3), (64, 64)), fmt="JPEG")[:200]
    response = await client.post(url, files={"file": ("t.jpg", truncated)})
    assert response.status_code == 422


async def test_body_over_the_limit_is_413_before_reading(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/tiny:predict", content=b"x" * 300_000)
    assert response.status_code == 413
    assert "limit of 200000 bytes" in response.json()["error"]

    async def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: counted while read
        for _ in range(30):
            yield b"x" * 10_000

    response = await client.post("/v1/models/tiny:predict", content=chunks())
    assert response.status_code == 413


async def test_model_listing_card_and_errors(client: httpx.AsyncClient) -> None:
    models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert set(models) == {"tiny", "cifar10_cnn"}
    tiny = models["tiny"]
    assert tiny["served_version"] == "2" and tiny["state"] == "READY"
    versions = [(v["version"], v["state"]) for v in tiny["versions"]]
    assert versions == [("2", "READY"), ("1", "UNLOADED")]
    card = (await client.get("/v1/models/cifar10_cnn")).json()
    assert card["state"] == "READY" and card["card"]["class_names"][3] == "cat"
    response = await client.get("/v1/models/nope")
    assert response.status_code == 404 and "unknown model 'nope'" in response.json()["error"]
    response = await client.get("/v1/nothing/here")
    assert response.status_code == 404 and "error" in response.json()
    response = await client.delete("/v1/models")
    assert response.status_code == 405 and "error" in response.json()


async def test_layers_of_the_lecture_model(client: httpx.AsyncClient) -> None:
    table = (await client.get("/v1/models/cifar10_cnn/layers")).json()
    assert table["total_params"] == 122_570
    assert table["layers"][0]["output_shape"] == [None, 30, 30, 32]
    text = (await client.get("/v1/models/cifar10_cnn/layers?format=text")).text
    assert "Total params: 122,570" in text and "conv2d_1 (Conv2D)" in text
    unreadable = await client.get("/v1/models/tiny/layers")
    assert unreadable.status_code == 422 and "ReduceMean" in unreadable.json()["error"]


class ReloadAfterGet(ModelRepository):
    """A real repository whose next poll lands right after ``get`` has handed out a runtime: the
    watcher thread's swap at the worst moment for a route that looks the model up twice."""

    reload_on_get = False

    def get(self, name: str, version: str | int | None = None) -> ModelRuntime:
        runtime = super().get(name, version)
        if self.reload_on_get:
            self.reload_on_get = False
            self.poll()
        return runtime


async def test_layers_label_a_table_with_its_own_version_across_a_reload(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {}, lecture=True)  # cifar10_cnn v1: the lecture CNN
    app = create_app(make_settings(repo, poll_interval_s=0))
    state = app.state.dataplane
    repository = ReloadAfterGet(repo, state.repository.options, state.repository.default_policy)
    state.repository = repository
    async with app.router.lifespan_context(app):
        write_model(repo, "cifar10_cnn", 2)  # the tiny graph, whose layer table cannot be read
        repository.reload_on_get = True
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            response = await http.get("/v1/models/cifar10_cnn/layers")
        assert repository.entry("cifar10_cnn").version == 2  # the reload did land in between
    assert response.status_code == 200, response.text
    table = response.json()
    assert table["model_version"] == "1" and table["total_params"] == 122_570


async def test_metrics_count_requests_and_images(client: httpx.AsyncClient) -> None:
    instances = [solid((1, 2, 3)).tolist()] * 3
    await client.post("/v1/models/tiny:predict", json={"instances": instances})
    await client.get("/v1/models/nope")
    text = (await client.get("/metrics")).text
    assert 'images_classified_total{model="tiny",version="2"} 3.0' in text
    assert (
        'http_requests_total{endpoint="/v1/models/{name}:predict",method="POST",status="200"}'
        in text
    )
    assert 'endpoint="/v1/models/{name}",method="GET",status="404"' in text
    assert "inference_batch_size_bucket" in text and "http_request_duration_seconds" in text


async def test_a_method_outside_the_usual_ones_is_counted_as_other(
    client: httpx.AsyncClient,
) -> None:
    """A series per method a client tried (35 methods on 37 routes) grew /metrics from 66 to
    1,919 series for good, and every scrape with it."""
    for method in ("PROPFIND", "BREW", "X" * 40):
        assert (await client.request(method, "/v2/health/live")).status_code == 405
    text = (await client.get("/metrics")).text
    assert 'endpoint="/v2/health/live",method="other",status="405"} 3.0' in text
    assert "PROPFIND" not in text and "BREW" not in text


async def test_openapi_documents_every_endpoint(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    for path in [
        "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer", "/v1/models/{name}:predict",
        "/v1/models/{name}:classify", "/v1/models", "/v1/models/{name}",
        "/v1/models/{name}/layers", "/metrics",
    ]:  # fmt: skip
        assert path in paths, path
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert "example" in infer["requestBody"]["content"]["application/json"]
    assert (await client.get("/docs")).status_code == 200


async def test_docs_page_loads_swagger_ui_from_this_server_only(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text[:500]
    assert all(s.startswith("/") for s in sources), sources  # nothing from a CDN
    for source in sources:
        asset = await client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 100
    ranges = "bytes=" + ",".join(f"{n}-{n}" for n in range(0, 200, 2))  # 100 one-byte ranges
    whole = await client.get(source, headers={"Range": ranges})
    assert whole.status_code == 200 and whole.content == asset.content  # the body, once
    again = await client.get(source, headers={"If-None-Match": asset.headers["etag"]})
    assert again.status_code == 304 and not again.content  # revalidated after max-age
    assert (await client.get("/docs/assets/../../etc/passwd")).status_code == 404
    assert (await client.get("/docs/assets/index.html")).status_code == 404
    assert (await client.get("/redoc")).status_code == 404


async def test_the_explorer_page_cannot_be_framed(client: httpx.AsyncClient) -> None:
    for path in ("/", "/static/page.js", "/docs"):
        response = await client.get(path)
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"


async def test_a_large_answer_is_built_on_the_work_pool_and_says_the_same(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``INLINE_CLASSES`` named classes (a million at 1,024 rows of 1,000 classes), the
    answer is built and encoded off the event loop; it is the answer built on it."""
    files = [
        ("file", ("a.png", png(solid((200, 40, 40))))),
        ("file", ("b.png", png(solid((0, 0, 255))))),
    ]
    inline = await client.post("/v1/models/tiny:classify?top_k=3", files=files)
    built_on: list[str] = []

    def recorded(*args: Any) -> bytes:
        built_on.append(threading.current_thread().name)
        return encoded(*args)

    encoded = v1._encoded_predictions
    monkeypatch.setattr(v1, "INLINE_CLASSES", 5)  # 2 images x 3 classes: past it
    monkeypatch.setattr(v1, "_encoded_predictions", recorded)
    pooled = await client.post("/v1/models/tiny:classify?top_k=3", files=files)
    assert pooled.status_code == inline.status_code == 200
    assert pooled.json() == inline.json() and set(inline.json()) >= {"answers", "abstain_below"}
    assert built_on and built_on[0] != threading.current_thread().name


async def test_the_card_and_the_openapi_document_are_encoded_cheaply(
    client: httpx.AsyncClient,
) -> None:
    """The card as orjson encodes its dataclass, the document once: the same JSON as before
    (``to_dict``, FastAPI's own route), at a fraction of the cost."""
    answer = (await client.get("/v1/models/cifar10_cnn")).json()
    card = ModelCard.from_dict(answer["card"])
    assert answer["card"] == json.loads(json.dumps(card.to_dict()))
    first = await client.get("/openapi.json")
    again = await client.get("/openapi.json")
    assert first.content == again.content and first.headers["content-type"] == "application/json"
    assert "/v1/models/{name}:classify" in first.json()["paths"]
