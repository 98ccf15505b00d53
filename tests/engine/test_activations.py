"""Feature maps through the inspection session: shapes of the layer table, values of the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from service.core.errors import InvalidCard, UnprocessableInput
from service.engine.activations import ActivationSession, ActivationSessions
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.work_pool import WorkPool
from tests.support.models import lecture_graph, make_model_repo, write_model

OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",))


def new_sessions() -> ActivationSessions:
    return ActivationSessions(OPTIONS, WorkPool(threads=1, max_waiting=0))  # threads on first use


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(make_model_repo(tmp_path), OPTIONS)
    repository.load()
    return repository


def _session(
    repository: ModelRepository, sessions: ActivationSessions | None = None
) -> ActivationSession:
    entry = repository.entry("cifar10_cnn")
    assert entry.card is not None
    return (sessions or new_sessions()).get(entry.card, entry.path, entry.layers)


def _first_conv_in_numpy(image: np.ndarray) -> np.ndarray:
    """conv0 + ReLU of the lecture graph, computed from its initializers: (30, 30, 32)."""
    weights = {t.name: numpy_helper.to_array(t) for t in lecture_graph().graph.initializer}
    kernel, bias = weights["conv0.weight"], weights["conv0.bias"]  # (32, 3, 3, 3), (32,)
    x = image.astype(np.float32) / 255.0  # (32, 32, 3)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(0, 1))  # (30, 30, 3, 3, 3)
    out = np.einsum("hwcij,kcij->hwk", windows, kernel) + bias
    return np.maximum(out, 0.0)


def test_default_layers_are_every_conv_and_pool_with_the_table_shapes(
    repository: ModelRepository,
) -> None:
    session = _session(repository)
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    results = session.run(image, session.select(None))
    table = repository.entry("cifar10_cnn").layers
    assert table is not None and table.table is not None
    expected = [
        (r.name, r.output_shape) for r in table.table.rows if r.type in ("conv2d", "max_pool")
    ]
    assert [(a.layer.name, a.values.shape) for a in results] == expected
    assert [name for name, _ in expected] == [
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "conv2d_2",
    ]  # fmt: skip


def test_first_conv_activations_are_the_convolution_of_the_image(
    repository: ModelRepository,
) -> None:
    session = _session(repository)
    image = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    conv, pool = session.run(image, session.select(["conv2d", "max_pooling2d"]))
    reference = _first_conv_in_numpy(image)
    np.testing.assert_allclose(conv.values, reference, atol=1e-4)
    pooled = reference.reshape(15, 2, 15, 2, 32).max(axis=(1, 3))
    np.testing.assert_allclose(pool.values, pooled, atol=1e-4)


def test_dense_layers_can_be_asked_for_by_name(repository: ModelRepository) -> None:
    session = _session(repository)
    image = np.zeros((32, 32, 3), np.uint8)
    flat, dense = session.run(image, session.select(["flatten", "dense"]))
    assert flat.values.shape == (1024,) and dense.values.shape == (64,)
    (last,) = session.run(image, session.select(["dense_1"]))
    logits = repository.get("cifar10_cnn").run(image[None], ["logits"])["logits"][0]
    np.testing.assert_allclose(last.values, logits, atol=1e-5)


def test_unknown_layer_names_the_known_ones(repository: ModelRepository) -> None:
    with pytest.raises(UnprocessableInput, match=r"no layer 'conv9'.*conv2d, max_pooling2d"):
        _session(repository).select(["conv9"])


def test_session_is_built_once_and_the_classification_session_is_untouched(
    repository: ModelRepository,
) -> None:
    runtime = repository.get("cifar10_cnn")
    before = runtime.session
    sessions = new_sessions()
    first = _session(repository, sessions)
    assert _session(repository, sessions) is first
    assert runtime.session is before
    assert [o.name for o in runtime.session.get_outputs()] == ["logits", "probabilities"]
    assert len(first.session.get_outputs()) == 2 + 8 - 1  # every layer; dense_1 is "logits"


def test_a_graph_changed_on_disk_is_refused(repository: ModelRepository, tmp_path: Path) -> None:
    entry = repository.entry("cifar10_cnn")
    write_model(tmp_path / "other", "cifar10_cnn", 1)  # a different graph, same name
    other = tmp_path / "other" / "cifar10_cnn" / "1" / "model.onnx"
    (entry.path / "model.onnx").write_bytes(other.read_bytes())
    with pytest.raises(InvalidCard, match="changed on disk"):
        _session(repository)


def test_a_model_without_layer_table_is_refused(repository: ModelRepository) -> None:
    entry = repository.entry("tiny")
    assert entry.card is not None
    with pytest.raises(InvalidCard, match="ReduceMean"):
        new_sessions().get(entry.card, entry.path, entry.layers)
