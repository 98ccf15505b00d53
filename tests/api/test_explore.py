"""The shape calculator, feature maps and the explorer page, in-process through httpx."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api.feature_grid import (
    HEADER_PX,
    LABEL_PX,
    LEVELS,
    MARGIN_PX,
    render_feature_grid,
    viridis_lut,
)
from tests.support.feature_grids import count_tiles
from training.__main__ import main as training_cli
from training.architectures import LECTURE

pytestmark = pytest.mark.anyio

SCRIPTS = ("page.js", "monitor.js")  # the page's scripts
SVG_NS = "http://www.w3.org/2000/svg"  # a name in monitor.js, never loaded
LECTURE_ROWS = [
    ("conv2d", [30, 30, 32], 896), ("max_pooling2d", [15, 15, 32], 0),
    ("conv2d_1", [13, 13, 64], 18_496), ("max_pooling2d_1", [6, 6, 64], 0),
    ("conv2d_2", [4, 4, 64], 36_928), ("flatten", [1024], 0),
    ("dense", [64], 65_600), ("dense_1", [10], 650),
]  # fmt: skip
CHANNELS = {
    "conv2d": 32,
    "max_pooling2d": 32,
    "conv2d_1": 64,
    "max_pooling2d_1": 64,
    "conv2d_2": 64,
}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (32, 32, 3), dtype=np.uint8)


# -- shape calculator -----------------------------------------------------------------------


async def shapes(client: httpx.AsyncClient, body: Any, **params: Any) -> httpx.Response:
    return await client.post("/v1/shapes", json=body, params=params)


async def test_worked_example_227_with_f11_s4_k96_gives_55x55x96(client: httpx.AsyncClient) -> None:
    layers = [{"type": "conv2d", "filters": 96, "kernel": 11, "stride": 4, "padding": 0}]
    response = await shapes(client, {"input_shape": [227, 227, 3], "layers": layers})
    assert response.status_code == 200, response.text
    (row,) = response.json()["layers"]
    assert row["output_shape"] == [55, 55, 96]
    assert row["params"] == (11 * 11 * 3 + 1) * 96


async def test_worked_example_5x5_with_3x3_filter_gives_3x3(client: httpx.AsyncClient) -> None:
    body = {"input_shape": [5, 5, 1], "layers": [{"type": "conv2d", "filters": 1, "kernel": 3}]}
    response = await shapes(client, body, strict="true")
    assert response.json()["layers"][0]["output_shape"] == [3, 3, 1]


async def test_lecture_model_has_122570_params(client: httpx.AsyncClient) -> None:
    body = (await shapes(client, {"input_shape": [32, 32, 3], "layers": LECTURE})).json()
    rows = [(r["name"], r["output_shape"], r["params"]) for r in body["layers"]]
    assert rows == LECTURE_ROWS
    assert (body["total_params"], body["trainable_params"]) == (122_570, 122_570)
    # 13 / 2 is floored by the second pooling: said in the row, the notes and the flag.
    assert body["floored"] is True and body["strict"] is False
    assert "floored" in body["layers"][3]["note"] and body["notes"]


async def test_strict_mode_refuses_the_lecture_second_pooling(client: httpx.AsyncClient) -> None:
    response = await shapes(client, {"input_shape": [32, 32, 3], "layers": LECTURE}, strict=True)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "layer 3 (max_pooling2d_1, max_pool): (W - F) / S + 1 = (13 - 2) / 2 + 1 = 6.5 "
        "is not a whole number"
    )


async def test_text_format_prints_the_keras_summary(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/shapes",
        params={"format": "text"},
        json={"input_shape": [32, 32, 3], "layers": LECTURE},
    )
    assert response.headers["content-type"].startswith("text/plain")
    assert "conv2d_1 (Conv2D)" in response.text and "Total params: 122,570" in response.text


CONV = {"type": "conv2d", "filters": 4, "kernel": 3}
IMPOSSIBLE: list[tuple[dict[str, Any], dict[str, str], str]] = [
    (
        {"layers": [{**CONV, "kernel": 64}]},
        {},
        "layer 0 (conv2d, conv2d): (W - F + 2P) / S + 1 = (32 - 64 + 2*0) / 1 + 1 is below 1",
    ),
    (
        {"layers": [{"type": "max_pool", "pool": 3}]},
        {"strict": "true"},
        "layer 0 (max_pooling2d, max_pool): (W - F) / S + 1 = (32 - 3) / 3 + 1 = 10.6667 "
        "is not a whole number",
    ),
    ({"layers": [{**CONV, "stride": 2}]}, {"strict": "true"}, "= 15.5 is not a whole number"),
    (
        {"layers": [{"type": "dense", "units": 10}]},
        {},
        "layer 0 (dense, dense): dense needs a flat input; add a flatten layer before it",
    ),
    ({"layers": [{"type": "conv3d"}]}, {}, "layer 0: unknown layer type 'conv3d'"),
    ({"layers": [{**CONV, "filters": 10**9}]}, {}, "'filters' must be between 1 and 1048576"),
    ({"input_shape": [100000, 100000, 3], "layers": []}, {}, "absurdly large"),
    ({"layers": [{"type": "flatten"}] * 1001}, {}, "should have at most 1000 items"),
    ({"input_shape": "32x32", "layers": []}, {}, "'input_shape' must be a list"),
    ({"input_shape": [32, 32, 3]}, {}, "'layers' must be a list"),
    ({"layers": ["conv2d"]}, {}, "layer 0: must be an object"),
]


@pytest.mark.parametrize(("body", "params", "message"), IMPOSSIBLE)
async def test_impossible_layers_are_422_naming_layer_and_arithmetic(
    client: httpx.AsyncClient, body: dict[str, Any], params: dict[str, str], message: str
) -> None:
    response = await shapes(client, {"input_shape": [32, 32, 3], **body}, **params)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


async def test_calculator_request_errors_are_not_500(client: httpx.AsyncClient) -> None:
    bad_json = await client.post(
        "/v1/shapes", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    csv = await client.post("/v1/shapes", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert csv.status_code == 415
    assert (await shapes(client, [1, 2, 3])).status_code == 422


LONG_BODIES = {
    "60,000 wrong dimensions": ("/v1/shapes", {"input_shape": [[]] * 60_000, "layers": []}),
    "2,000 layers": ("/v1/shapes", {"input_shape": [32, 32, 3], "layers": [{}] * 2_000}),
    "68,000 wrong layer names": (
        "/v1/models/cifar10_cnn/activations",
        {"instances": [{"b64": "x"}], "layer": [1] * 68_000},
    ),
}


@pytest.mark.parametrize(("path", "body"), LONG_BODIES.values(), ids=LONG_BODIES.keys())
async def test_a_list_past_its_length_is_refused_by_its_length_in_a_short_answer(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    """Checked before its items: each wrong item named cost 1.7 s and a 16 MB answer."""
    response = await client.post(path, json=body)
    assert response.status_code in (400, 422), response.text[:300]
    assert len(response.content) < 1_000
    assert "should have at most" in response.json()["error"]


async def test_a_body_of_many_wrong_items_names_the_first_eight(client: httpx.AsyncClient) -> None:
    body = {"instances": [{"b64": "x"}], "layer": [1] * 20}
    response = await client.post("/v1/models/cifar10_cnn/activations", json=body)
    message = response.json()["error"]
    assert response.status_code == 400, message
    assert message.count("must be a string") == 8 and message.endswith("and 13 more")


async def test_summary_layers_endpoint_and_calculator_agree_on_the_lecture_model(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert training_cli(["summary", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    served = (await client.get("/v1/models/cifar10_cnn/layers")).json()
    calculated = (await shapes(client, {"input_shape": [32, 32, 3], "layers": LECTURE})).json()

    def rows(table: dict[str, Any]) -> list[tuple[str, str, list[int], int, int]]:
        return [
            (r["name"], r["type"], [d for d in r["output_shape"] if d is not None], r["params"],
             r["trainable_params"])
            for r in table["layers"]
        ]  # fmt: skip

    assert rows(cli) == rows(served) == rows(calculated)
    assert [(name, shape, params) for name, _, shape, params, _ in rows(cli)] == LECTURE_ROWS
    assert cli["total_params"] == served["total_params"] == calculated["total_params"] == 122_570


# -- feature maps ---------------------------------------------------------------------------


async def activations(
    client: httpx.AsyncClient, model: str = "cifar10_cnn", **params: Any
) -> httpx.Response:
    files = {"file": ("x.png", png(image()), "image/png")}
    return await client.post(f"/v1/models/{model}/activations", files=files, params=params)


async def test_activations_have_the_shapes_of_the_layer_table(client: httpx.AsyncClient) -> None:
    response = await activations(client)
    assert response.status_code == 200, response.text
    layers = response.json()["layers"]
    table = (await client.get("/v1/models/cifar10_cnn/layers")).json()["layers"]
    expected = {r["name"]: r["output_shape"][1:] for r in table}
    assert [layer["name"] for layer in layers] == list(CHANNELS)
    for layer in layers:
        values = np.asarray(layer["values"], dtype=np.float32)
        assert list(values.shape) == layer["shape"] == expected[layer["name"]]
        assert layer["min"] == pytest.approx(values.min()) and layer["max"] == pytest.approx(
            values.max()
        )
        assert layer["layout"] == "HWC"


async def test_json_and_multipart_images_give_the_same_activations(
    client: httpx.AsyncClient,
) -> None:
    from_file = (await activations(client, layer="conv2d_1")).json()["layers"]
    nested = await client.post(
        "/v1/models/cifar10_cnn/activations",
        json={"instances": [image().tolist()], "layer": ["conv2d_1", "dense"]},
    )
    assert nested.status_code == 200, nested.text
    conv, dense = nested.json()["layers"]
    np.testing.assert_allclose(conv["values"], from_file[0]["values"], atol=1e-6)
    assert dense["shape"] == [64] and dense["layout"] == "N"


async def test_png_grid_has_one_tile_per_channel(client: httpx.AsyncClient) -> None:
    for layer, channels in [("conv2d", 32), ("conv2d_2", 64)]:
        response = await activations(client, layer=layer, format="png")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert count_tiles(response.content) == channels
    everything = await activations(client, format="png")
    assert count_tiles(everything.content) == sum(CHANNELS.values())
    assert Image.open(io.BytesIO(everything.content)).mode == "P"  # a byte a pixel to deflate


def test_tile_colours_are_never_grey() -> None:
    lut = viridis_lut().astype(int)
    assert ((lut[:, 0] != lut[:, 1]) | (lut[:, 1] != lut[:, 2])).all()


@pytest.mark.parametrize(
    ("model", "params", "kwargs", "status", "message"),
    [
        ("nope", {}, {}, 404, "unknown model"),
        ("cifar10_cnn", {"layer": "conv9"}, {}, 422, "no layer 'conv9'"),
        ("cifar10_cnn", {"layer": "dense", "format": "png"}, {}, 422, "no feature maps"),
        ("tiny", {}, {}, 422, "cannot read the layer table"),
        ("cifar10_cnn", {}, {"files": [("file", b"a"), ("file", b"b")]}, 422, "exactly one"),
        ("cifar10_cnn", {}, {"files": {"file": ("x.png", b"junk")}}, 422, "image (file=x.png)"),
        ("cifar10_cnn", {}, {"data": {"layer": "conv2d"}, "files": {}}, 415, "expected"),
        ("cifar10_cnn", {}, {"json": {"instances": [[[0]]] * 2}}, 422, "exactly one image"),
        ("cifar10_cnn", {}, {"json": {"instances": [[[0]]]}}, 422, "instance"),
        ("cifar10_cnn", {}, {"content": b"x", "headers": {"Content-Type": "a/b"}}, 415, "expected"),
    ],
)  # fmt: skip
async def test_activation_errors_name_the_problem(
    client: httpx.AsyncClient, model: str, params: dict[str, str], kwargs: dict[str, Any],
    status: int, message: str,
) -> None:  # fmt: skip
    if not kwargs:
        response = await activations(client, model, **params)
    else:
        response = await client.post(f"/v1/models/{model}/activations", params=params, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


async def test_classification_is_unchanged_after_feature_maps(client: httpx.AsyncClient) -> None:
    files = {"file": ("x.png", png(image()), "image/png")}
    before = (await client.post("/v1/models/cifar10_cnn:classify", files=files)).json()
    assert (await activations(client)).status_code == 200
    after = (await client.post("/v1/models/cifar10_cnn:classify", files=files)).json()
    assert before == after


# -- the page -------------------------------------------------------------------------------


async def test_page_is_served_with_its_files_and_no_external_references(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if url == "data:,":
            continue  # no favicon request
        assert url.startswith("/static/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
    for name in SCRIPTS:
        script = (await client.get(f"/static/{name}")).text.replace(f'"{SVG_NS}"', "")
        assert "http://" not in script and "https://" not in script, name
    assert (await client.get("/static/../app.py")).status_code == 404


async def test_page_only_calls_public_endpoints(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for name in SCRIPTS:
        script = (await client.get(f"/static/{name}")).text
        called = set(re.findall(r"`(/v1/[^`?]*)", script))
        called |= set(re.findall(r'"(/v1/[^"?]*)"', script))
        assert called, f"no API calls found in {name}"
        for call in called:
            template = re.sub(r"\$\{[^}]*\}", "{name}", call)
            assert template in paths, f"{name} calls {call}, which is not a public endpoint"


async def test_page_starts_the_calculator_from_the_lecture_model(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    block = re.search(
        r'<script type="application/json" id="lecture-layers">(.*?)</script>', page, re.S
    )
    assert block is not None
    assert json.loads(block.group(1)) == LECTURE


def test_an_integer_maps_levels_do_not_wrap_around() -> None:
    """Integer layer outputs: an int8 map spanning -100..100 (its span overflows int8)."""
    values = np.array([[[-100], [0], [100]]], dtype=np.int8)  # (1, 3, 1)
    layer = SimpleNamespace(name="q", type="conv2d", shape=(1, 3, 1))
    png = render_feature_grid([SimpleNamespace(values=values, layer=layer)])  # type: ignore[list-item]
    entries = np.asarray(Image.open(io.BytesIO(png)))  # palette entries: viridis' levels first
    y, x = MARGIN_PX + HEADER_PX + LABEL_PX, MARGIN_PX
    tile = 48 // 3
    assert [int(entries[y, x + i * tile]) for i in range(3)] == [0, (LEVELS - 1) // 2, LEVELS - 1]
