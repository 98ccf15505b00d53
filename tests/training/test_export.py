"""ONNX export: the graph contract and the parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.core.card import ModelCard, sha256_file
from service.core.errors import ExportError
from service.core.shapes import layer_table
from service.engine.layers import read_layers
from tests.support.training_inputs import TINY_94, class_images
from training.architectures import LECTURE
from training.data import CLASS_NAMES
from training.evaluation import check_parity
from training.export import INPUTS, OUTPUTS, export_onnx, preprocessing
from training.model import Classifier, init_from_data


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


def _tiny_94(tta: str) -> Classifier:
    """TINY_94 with trained-looking weights: untrained Dirac filters and fresh batch norms fold
    into equal tensors that the exporter stores once, which no trained model has."""
    torch.manual_seed(0)
    model = Classifier(TINY_94, tta=tta)
    images = class_images(3, 0)[0]
    init_from_data(model, TINY_94, images)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.train()
    model(torch.from_numpy(images))  # moves the batch-norm statistics
    return model.eval()


def _card(path: Path) -> ModelCard:
    return ModelCard(
        name="tiny_94", version=1, class_names=list(CLASS_NAMES), inputs=INPUTS, outputs=OUTPUTS,
        sha256=sha256_file(path),
    )  # fmt: skip


def test_test_time_augmentation_is_inside_the_graph_and_parity_covers_it(tmp_path: Path) -> None:
    model = _tiny_94("flip-translate")
    path = tmp_path / "tta.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = class_images(1, 3)[0]
    for n in (1, 7):
        logits, _ = session.run(None, {"images": images[:n]})
        assert logits.shape == (n, 10)
        torch.testing.assert_close(
            torch.from_numpy(logits), model(torch.from_numpy(images[:n])), rtol=1e-4, atol=1e-4
        )
    assert check_parity(model, path, images).passed
    one_view = Classifier(TINY_94).eval()
    one_view.load_state_dict(model.state_dict())
    with pytest.raises(ExportError, match="parity gate failed"):
        check_parity(one_view, path, images)  # the graph averages views; one view differs


def test_the_service_reads_the_same_layer_table_from_a_tta_graph(tmp_path: Path) -> None:
    tables = []
    for tta in ("none", "flip-translate"):
        path = tmp_path / f"{tta}.onnx"
        export_onnx(_tiny_94(tta), path)
        report = read_layers(path.read_bytes(), _card(path))
        assert report.table is not None, report.error
        tables.append(report.table)
    assert tables[0] == tables[1]
    assert tables[1].rows[-1].type == "dense" and tables[1].output_shape == (10,)
    assert tables[1].total_params == layer_table((32, 32, 3), TINY_94).total_params


def test_layers_with_equal_weights_keep_their_own_tensors_in_the_graph(tmp_path: Path) -> None:
    """Untrained, TINY_94's two batch norms without scale both hold ones(8): the exporter would
    store them once, and the service's layer reader would find no weights for the second."""
    layers = [*TINY_94[:6], {**TINY_94[4]}, *TINY_94[6:]]
    model = Classifier(layers).eval()
    path = tmp_path / "equal.onnx"
    export_onnx(model, path)
    graph = onnx.load(str(path))
    assert not [n for n in graph.graph.node if n.op_type == "Identity"]
    report = read_layers(path.read_bytes(), _card(path))
    assert report.table is not None, report.error
    assert report.table.total_params == layer_table((32, 32, 3), layers).total_params
    assert check_parity(model, path, class_images(1, 3)[0]).passed


def test_the_card_says_which_views_the_graph_averages() -> None:
    assert "test_time_augmentation" not in preprocessing("none")
    assert "6 views" in preprocessing("flip-translate")["test_time_augmentation"]
    assert "mirror" in preprocessing("flip")["test_time_augmentation"]
