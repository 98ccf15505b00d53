"""ONNX export: the graph contract and the parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.core.errors import ExportError
from tests.training.conftest import class_images
from training.architectures import LECTURE
from training.export import check_parity, export_onnx
from training.model import Classifier


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, Path]:
    torch.manual_seed(0)
    model = Classifier(LECTURE).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(model, path)
    return model, path


def test_graph_takes_uint8_nhwc_with_dynamic_batch(exported: tuple[Classifier, Path]) -> None:
    _, path = exported
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    (image_input,) = graph.graph.input
    assert image_input.name == "images"
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert [o.name for o in graph.graph.output] == ["logits", "probabilities"]
    for output in graph.graph.output:
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_any_batch_size_runs_and_probabilities_sum_to_one(
    exported: tuple[Classifier, Path],
) -> None:
    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        images = class_images(1, n)[0][:n]
        logits, probs = session.run(None, {"images": images})
        assert logits.shape == probs.shape == (n, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_parity_gate_passes_for_the_exported_model(exported: tuple[Classifier, Path]) -> None:
    model, path = exported
    images, _ = class_images(30, 5)
    parity = check_parity(model, path, images)
    assert parity.passed
    assert parity.images == 256
    assert parity.max_abs_logit_diff <= 1e-4


def test_parity_gate_fails_when_graph_and_weights_disagree(
    exported: tuple[Classifier, Path],
) -> None:
    model, path = exported
    changed = Classifier(LECTURE).eval()
    changed.load_state_dict(model.state_dict())
    dense = changed.net.get_submodule("dense_1")
    assert isinstance(dense, torch.nn.Linear)
    with torch.no_grad():
        dense.bias.add_(0.01)  # a small drift the gate must catch
    with pytest.raises(ExportError, match="parity gate failed"):
        check_parity(changed, path, class_images(3, 5)[0])
