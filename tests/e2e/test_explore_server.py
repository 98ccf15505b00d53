"""The shipped model explored over a real uvicorn server: one arithmetic, real feature maps."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.shapes import format_table, layer_table
from service.settings import Settings
from tests.support.feature_grids import count_tiles
from tests.support.servers import running_server
from training.architectures import INPUT_SHAPE, LECTURE

SHIPPED = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[str]:
    if not (SHIPPED / "cifar10_cnn").is_dir():
        pytest.skip("no shipped model in models/cifar10_cnn yet (training publishes it)")
    settings = Settings(model_repository=SHIPPED, providers=["CPUExecutionProvider"])
    with running_server(settings, grpc=False) as running:
        yield running.url


def test_shipped_layer_table_is_the_calculators_table(shipped_server: str) -> None:
    with httpx.Client(base_url=shipped_server, timeout=10) as http:
        card = http.get("/v1/models/cifar10_cnn").json()["card"]
        architecture = card["architecture"]
        if architecture["layers"] != LECTURE:
            pytest.skip("the shipped architecture is not the lecture's")
        body = {"input_shape": list(INPUT_SHAPE), "layers": architecture["layers"]}
        calculated = http.post("/v1/shapes", json=body).json()
        served = http.get("/v1/models/cifar10_cnn/layers").json()
        text = http.get("/v1/models/cifar10_cnn/layers", params={"format": "text"}).text
        calculated_text = http.post("/v1/shapes", json=body, params={"format": "text"}).text
    assert calculated["total_params"] == served["total_params"] == 122_570
    assert [r["output_shape"] for r in calculated["layers"]] == [
        r["output_shape"][1:] for r in served["layers"]
    ]
    assert [r["params"] for r in calculated["layers"]] == [r["params"] for r in served["layers"]]
    # The same formatter too: the tables differ only in their title line.
    assert text.splitlines()[1:] == calculated_text.splitlines()[1:]
    assert calculated_text.strip() == format_table(layer_table(INPUT_SHAPE, LECTURE)).strip()


def test_shipped_feature_maps_have_the_table_shapes(shipped_server: str) -> None:
    y, x = np.mgrid[0:32, 0:32]
    pixels = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)  # gradients
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    files = {"file": ("gradient.png", buffer.getvalue(), "image/png")}
    url = f"{shipped_server}/v1/models/cifar10_cnn/activations"
    with httpx.Client(timeout=30) as http:
        table = http.get(f"{shipped_server}/v1/models/cifar10_cnn/layers").json()["layers"]
        shapes = {r["name"]: r["output_shape"][1:] for r in table}
        layers = http.post(url, files=files).json()["layers"]
        grid = http.post(url, files=files, params={"layer": "conv2d_1", "format": "png"})
    assert [layer["name"] for layer in layers] == [
        r["name"] for r in table if r["type"] in ("conv2d", "max_pool")
    ]
    for layer in layers:
        values = np.asarray(layer["values"])
        assert list(values.shape) == shapes[layer["name"]]
        assert values.min() >= 0  # ReLU (and max pooling of ReLU) outputs
    assert grid.headers["content-type"] == "image/png"
    assert count_tiles(grid.content) == shapes["conv2d_1"][-1]
