"""The shipped model in ``models/`` (training publishes it): served, with the lecture's layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState

SHIPPED = Path(__file__).resolve().parents[2] / "models"
LECTURE_SHAPES = [
    [None, 30, 30, 32], [None, 15, 15, 32], [None, 13, 13, 64], [None, 6, 6, 64],
    [None, 4, 4, 64], [None, 1024], [None, 64], [None, 10],
]  # fmt: skip
LECTURE_PARAMS = [896, 0, 18_496, 0, 36_928, 0, 65_600, 650]


@pytest.fixture(scope="module")
def shipped() -> ModelRepository:
    if not (SHIPPED / "cifar10_cnn").is_dir():
        pytest.skip("no shipped model in models/cifar10_cnn yet (training publishes it)")
    repository = ModelRepository(SHIPPED, RuntimeOptions(providers=("CPUExecutionProvider",)))
    repository.load()
    return repository


def test_shipped_model_is_served(shipped: ModelRepository) -> None:
    entry = shipped.entry("cifar10_cnn")
    assert entry.state is ModelState.READY, entry.reason
    runtime = shipped.get("cifar10_cnn")
    out = runtime.run(np.zeros((2, 32, 32, 3), np.uint8))
    assert out["probabilities"].shape == (2, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_shipped_layer_table_is_the_lecture_table(shipped: ModelRepository) -> None:
    entry = shipped.entry("cifar10_cnn")
    assert entry.layers is not None and entry.layers.table is not None, entry.layers
    table = entry.layers.as_dict()
    assert entry.card is not None
    declared = entry.card.layer_table  # what training computed from the architecture
    kinds = {layer.get("type") for layer in entry.card.architecture.get("layers", [])}
    if "batch_norm" in kinds:  # torch's export folds batch norm into the convolutions
        pytest.skip("the shipped graph has batch norm folded away; its table differs by design")
    assert table["total_params"] == declared["total_params"]
    assert table["trainable_params"] == declared["trainable_params"]
    if declared["total_params"] != 122_570:
        pytest.skip(f"the shipped architecture is not the lecture's ({declared['total_params']})")
    assert [r["output_shape"] for r in table["layers"]] == LECTURE_SHAPES
    assert [r["params"] for r in table["layers"]] == LECTURE_PARAMS


def _shipped_versions() -> list[str]:
    """The newest version of each shipped model: what the default 'latest' policy serves."""
    newest: dict[str, int] = {}
    for d in SHIPPED.glob("*/[0-9]*"):
        if d.is_dir() and d.name.isdigit() and not d.parent.name.startswith("."):
            newest[d.parent.name] = max(newest.get(d.parent.name, 0), int(d.name))
    return sorted(f"{name}/{version}" for name, version in newest.items())


@pytest.mark.parametrize("model_version", _shipped_versions())
def test_every_shipped_model_serves_and_has_a_readable_layer_table(
    shipped: ModelRepository, model_version: str
) -> None:
    name, version = model_version.split("/")
    entry = shipped.entry(name, version)
    assert entry.state is ModelState.READY, entry.reason
    runtime = shipped.get(name, int(version))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = runtime.run(pixels)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert entry.layers is not None and entry.layers.error == "", entry.layers
    card = runtime.card
    assert card.metrics["per_class_accuracy"] and card.metrics["confusion_matrix"]
    if card.quantization:  # a variant ships only within its allowance of the float model
        check = card.quantization["check"]
        assert check["passed"] and check["drop"] <= check["max_drop"]
        source = (
            SHIPPED
            / card.quantization["source"]["name"]
            / str(card.quantization["source"]["version"])
        )
        assert (source / "model.onnx").is_file()
