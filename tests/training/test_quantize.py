"""Static INT8 quantization: a real QDQ graph from a small trained-shape network, checked against
its float original by onnxruntime, carded, and read back by the service's layer reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.core.card import ModelCard, TensorSpec, sha256_file
from service.core.errors import ExportError
from service.core.shapes import layer_table
from service.engine.layers import read_layers
from tests.support.training_inputs import class_images
from training.data import CLASS_NAMES, Split
from training.evaluation import compare, onnx_logits
from training.export import export_onnx
from training.model import Classifier
from training.quantize import int8_card_fields, quantize_int8

# The cifar_bn block shape, small: conv, pool, batch norm, GELU, then a dense head.
SMALL_BN: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "bias": False},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "gelu"},
    {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "bias": False},
    {"type": "max_pool", "pool": 2},
    {"type": "batch_norm"},
    {"type": "activation", "fn": "gelu"},
    {"type": "max_pool", "pool": 16},
    {"type": "flatten"},
    {"type": "dense", "units": 10},
]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    torch.manual_seed(0)
    model = Classifier(SMALL_BN)
    model.train()
    with torch.no_grad():  # batch-norm statistics from real-looking images, as training leaves
        model(torch.from_numpy(class_images(20, 1)[0]))
    model.eval()
    root = tmp_path_factory.mktemp("quantize")
    float_path, int8_path = root / "float.onnx", root / "int8.onnx"
    export_onnx(model, float_path)
    calibration = class_images(10, 2)[0]
    quantize_int8(float_path, int8_path, calibration)
    return float_path, int8_path, calibration


def _card(path: Path, name: str = "small") -> ModelCard:
    return ModelCard(
        name=name,
        version=1,
        class_names=list(CLASS_NAMES),
        inputs=[TensorSpec("images", "UINT8", [-1, 32, 32, 3])],
        outputs=[
            TensorSpec("logits", "FP32", [-1, 10]),
            TensorSpec("probabilities", "FP32", [-1, 10]),
        ],
        sha256=sha256_file(path),
        architecture={"name": "small_bn", "input_shape": [32, 32, 3], "layers": SMALL_BN},
        layer_table=layer_table((32, 32, 3), SMALL_BN).as_dict(),
        metrics={"test_accuracy": 0.5, "parity": {"passed": True}},
    )


def test_the_int8_graph_is_qdq_with_per_channel_weights(graphs: tuple[Path, Path, Any]) -> None:
    _, int8_path, _ = graphs
    graph = onnx.load(str(int8_path)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # two convolutions and the dense layer
    scales = {t.name: list(t.dims) for t in graph.initializer if t.name.endswith("weight_scale")}
    assert any(dims == [16] for dims in scales.values()), scales  # one scale per output channel


def test_the_int8_graph_keeps_the_contract_and_agrees_with_float(
    graphs: tuple[Path, Path, Any],
) -> None:
    float_path, int8_path, _ = graphs
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(uint8)")]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    images, labels = class_images(10, 3)
    float_logits, int8_logits = onnx_logits(float_path, images), onnx_logits(int8_path, images)
    assert int8_logits.shape == (100, 10) and int8_logits.dtype == np.float32
    assert not np.array_equal(float_logits, int8_logits)  # it did change the arithmetic
    spread = float_logits.max() - float_logits.min()
    assert np.abs(float_logits - int8_logits).max() < 0.1 * spread
    check, evaluation = compare(float_path, int8_path, Split(images, labels), max_drop=1.0)
    assert check.images == 100 and check.passed
    assert check.top1_agreement >= 0.8
    assert evaluation.accuracy == check.int8_accuracy
    strict, _ = compare(float_path, int8_path, Split(images, labels), max_drop=-1.0)
    assert not strict.passed  # a negative allowance can never hold: the gate can fail


def test_no_calibration_images_is_a_clear_error(
    graphs: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    float_path, _, calibration = graphs
    with pytest.raises(ExportError, match="calibration images"):
        quantize_int8(float_path, tmp_path / "x.onnx", calibration[:0])


def test_the_card_carries_the_int8_hash_scores_and_source(graphs: tuple[Path, Path, Any]) -> None:
    float_path, int8_path, _ = graphs
    images, labels = class_images(10, 3)
    check, evaluation = compare(float_path, int8_path, Split(images, labels), max_drop=0.005)
    fields = int8_card_fields(
        _card(float_path), int8_path, check, evaluation, {"images": 100, "seed": 0}
    )
    card = ModelCard.from_dict({**fields, "name": "small_int8", "version": 1})
    assert card.sha256 == sha256_file(int8_path) != sha256_file(float_path)
    assert card.metrics["test_accuracy"] == evaluation.accuracy
    assert card.metrics["confusion_matrix"] == evaluation.confusion
    assert "parity" not in card.metrics  # that was the float graph's check
    assert card.quantization["source"] == {
        "name": "small",
        "version": 1,
        "sha256": sha256_file(float_path),
    }
    assert card.quantization["check"]["drop"] == pytest.approx(check.drop)
    assert ModelCard.from_dict(card.to_dict()).quantization == card.quantization


def test_the_service_reads_the_same_layers_from_float_and_int8_graphs(
    graphs: tuple[Path, Path, Any],
) -> None:
    float_path, int8_path, _ = graphs
    reports = [read_layers(p.read_bytes(), _card(p)) for p in (float_path, int8_path)]
    for report in reports:
        assert report.error == "" and report.table is not None
    float_table, int8_table = (r.table for r in reports)
    assert float_table is not None and int8_table is not None
    rows = [(r.type, r.output_shape, r.params) for r in float_table.rows]
    assert rows == [(r.type, r.output_shape, r.params) for r in int8_table.rows]
    types = [r.type for r in float_table.rows]
    # The first batch norm is folded into its convolution by the export; GELU is one layer.
    assert types == [
        "conv2d", "conv2d", "max_pool", "batch_norm", "activation", "max_pool", "flatten", "dense",
    ]  # fmt: skip
    assert float_table.rows[0].output_shape == (32, 32, 8)
    assert float_table.rows[-1].params == 16 * 10 + 10
