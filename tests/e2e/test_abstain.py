"""``ABSTAIN_BELOW`` on a real server: v1 ``:classify`` answers "uncertain" for an image whose
top-1 probability is under it, keeps every probability visible, and the client shows it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import main
from service.settings import Settings
from tests.support.models import CIFAR_CLASSES, make_model_repo, tiny_reference
from tests.support.servers import Running, running_server

THRESHOLD = 0.5


def _solid_colours() -> tuple[np.ndarray, np.ndarray]:
    """One solid 32x32 image the tiny model is sure of (top-1 over 0.8) and one it is not
    (under 0.4), found with the model's numpy reference, so the test knows the answer."""
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, (400, 1, 1, 3), dtype=np.uint8)
    images = np.broadcast_to(colours, (400, 32, 32, 3))
    top1 = tiny_reference(images).max(axis=1)
    sure, unsure = np.flatnonzero(top1 > 0.8), np.flatnonzero(top1 < 0.4)
    assert len(sure) and len(unsure), "the tiny model should be sure of some colours, not others"
    return images[sure[0]].copy(), images[unsure[0]].copy()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless: the model sees these pixels
    return buffer.getvalue()


def _server(tmp: Path, abstain_below: float) -> Iterator[Running]:
    settings = Settings(
        model_repository=make_model_repo(tmp, lecture=False),
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        abstain_below=abstain_below,
    )
    with running_server(settings, grpc=False) as running:
        yield running


@pytest.fixture(scope="module")
def abstaining(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _server(tmp_path_factory.mktemp("abstain"), THRESHOLD)


@pytest.fixture(scope="module")
def answering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _server(tmp_path_factory.mktemp("answer"), 0.0)


def _classify(server: Running, images: list[np.ndarray]) -> dict[str, object]:
    form = [("file", (f"{i}.png", _png(p), "image/png")) for i, p in enumerate(images)]
    response = httpx.post(f"{server.url}/v1/models/tiny:classify", files=form, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_an_unsure_image_is_answered_uncertain_with_its_probabilities(
    abstaining: Running,
) -> None:
    sure, unsure = _solid_colours()
    body = _classify(abstaining, [sure, unsure])
    expected = tiny_reference(np.stack([sure, unsure]))
    assert body["answers"] == [CIFAR_CLASSES[int(expected[0].argmax())], "uncertain"]
    assert body["abstain_below"] == THRESHOLD
    predictions = body["predictions"]
    assert isinstance(predictions, list)
    for row, want in zip(predictions, expected, strict=True):  # still every top-k probability
        assert len(row) == Settings.model_fields["default_top_k"].default
        assert row[0]["probability"] == pytest.approx(want.max(), abs=1e-5)


def test_without_the_setting_every_image_gets_its_top_class(answering: Running) -> None:
    sure, unsure = _solid_colours()
    body = _classify(answering, [sure, unsure])
    predictions = body["predictions"]
    assert isinstance(predictions, list)
    assert body["answers"] == [row[0]["name"] for row in predictions]
    assert body["abstain_below"] == 0.0


def test_the_client_shows_uncertain_in_its_table_and_json_lines(
    abstaining: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sure, unsure = _solid_colours()
    files = [tmp_path / "sure.png", tmp_path / "unsure.png"]
    for path, pixels in zip(files, (sure, unsure), strict=True):
        path.write_bytes(_png(pixels))
    base = ["--url", abstaining.url, "predict", *map(str, files), "--model", "tiny"]
    assert main(base) == 0
    sure_row, unsure_row = capsys.readouterr().out.splitlines()
    assert "uncertain" not in sure_row
    assert unsure_row.split()[1] == "uncertain:" and len(unsure_row.split()) == 8
    assert main([*base, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["answer"] for line in lines] == [lines[0]["predictions"][0]["name"], "uncertain"]
    assert lines[1]["predictions"][0]["probability"] < THRESHOLD
