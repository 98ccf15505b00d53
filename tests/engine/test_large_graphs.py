"""A large graph (``LARGE_GRAPH_BYTES`` or more) is read by onnx in a child process and loaded by
onnxruntime by path, so neither holds the server's interpreter: served exactly as a small one.
Here every graph counts as large, and onnx's reading of a graph fails in this process, so a load
that works shows the child did it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.core.card import IMAGE_CLASSIFIER, MODEL_FILE, TENSOR
from service.core.errors import InvalidCard
from service.engine import activations, large_graphs, served_graph, version_folder
from service.engine.activations import ActivationSessions
from service.engine.large_graphs import ChildFailed, graph_path, in_child, onnxruntime_session
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.served_graph import read_graph_file
from service.engine.version_folder import ModelState
from service.engine.work_pool import WorkPool
from tests.support.models import CIFAR_CLASSES, make_model_repo, tiny_graph
from tests.support.tensor_models import add_sub_graph

OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",))
CONFIG = """
name: "cifar"
max_batch_size: 8
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
         { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
"""


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("onnx read the graph in the server's process")


def make_large(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every graph large from now on, onnx's reading refused here; returns what onnxruntime
    is given to load, as it is given."""
    given: list[Any] = []
    real = ort.InferenceSession

    def recording(model: Any, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        given.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(large_graphs, "LARGE_GRAPH_BYTES", 1)
    for name in ("read_layers", "config_card"):
        monkeypatch.setattr(served_graph, name, _refuse)
    monkeypatch.setattr(activations, "layer_outputs", _refuse)
    monkeypatch.setattr(ort, "InferenceSession", recording)
    return given


def _load(root: Path) -> ModelRepository:
    repository = ModelRepository(root, OPTIONS)
    repository.load()
    return repository


def _served_alike(small: ModelRepository, big: ModelRepository, name: str) -> None:
    expected, entry = small.entry(name), big.entry(name)
    assert entry.state is ModelState.READY, entry.reason
    assert entry.card == expected.card and entry.layers == expected.layers
    assert expected.runtime is not None and entry.runtime is not None
    if entry.card is not None and entry.card.kind == IMAGE_CLASSIFIER:
        images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        for output, values in expected.runtime.run(images).items():
            np.testing.assert_array_equal(entry.runtime.run(images)[output], values)


def _by_path(given: list[Any]) -> bool:
    return bool(given) and all(isinstance(m, str) and m.startswith("/proc/self/fd/") for m in given)


def test_a_carded_classifier_is_read_in_a_child_and_loaded_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_model_repo(tmp_path, models={"tiny": [1]})
    small = _load(root)
    given = make_large(monkeypatch)
    big = _load(root)
    for name in ("tiny", "cifar10_cnn"):
        _served_alike(small, big, name)
    layers = big.entry("cifar10_cnn").layers
    assert layers is not None and layers.table is not None and len(layers.table.rows) == 8
    assert _by_path(given)


def test_a_triton_folder_gets_its_card_from_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cifar"
    (folder / "1").mkdir(parents=True)
    onnx.save(tiny_graph(), str(folder / "1" / MODEL_FILE))
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "labels.txt").write_text("\n".join(CIFAR_CLASSES) + "\n")
    small = _load(tmp_path)
    given = make_large(monkeypatch)
    big = _load(tmp_path)
    _served_alike(small, big, "cifar")
    card = big.entry("cifar").card
    assert card is not None and card.kind == IMAGE_CLASSIFIER and card.class_names == CIFAR_CLASSES
    assert _by_path(given)


def test_a_graph_alone_gets_its_card_from_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "adder" / "1").mkdir(parents=True)
    onnx.save(add_sub_graph(["N", 4]), str(tmp_path / "adder" / "1" / MODEL_FILE))
    small = _load(tmp_path)
    make_large(monkeypatch)
    big = _load(tmp_path)
    _served_alike(small, big, "adder")
    card = big.entry("adder").card
    assert (
        card is not None
        and card.kind == TENSOR
        and [t.name for t in card.inputs]
        == [
            "INPUT0",
            "INPUT1",
        ]
    )


def test_feature_maps_of_a_large_graph_are_prepared_in_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = _load(make_model_repo(tmp_path, models={}))
    entry = repository.entry("cifar10_cnn")
    assert entry.card is not None
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def maps() -> list[np.ndarray]:
        sessions = ActivationSessions(OPTIONS, WorkPool(threads=1, max_waiting=0))
        session = sessions.get(entry.card, entry.path, entry.layers)  # type: ignore[arg-type]
        return [a.values for a in session.run(image, session.select(None))]

    expected = maps()
    given = make_large(monkeypatch)
    for values, wanted in zip(maps(), expected, strict=True):
        np.testing.assert_array_equal(values, wanted)
    assert _by_path(given)  # the served graph's bytes and the outputs the child added


def test_a_file_that_changed_since_the_server_read_it_is_refused_by_the_child(
    tmp_path: Path,
) -> None:
    folder = make_model_repo(tmp_path, models={"tiny": [1]}, lecture=False) / "tiny" / "1"
    digest = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    card, layers, _ = read_graph_file(folder, digest, "tiny", 1, None, None)
    assert card.kind == TENSOR and layers is None  # no config, no card: the graph alone
    with pytest.raises(InvalidCard, match="changed while it was loaded"):
        read_graph_file(folder, "0" * 64, "tiny", 1, None, None)


def test_a_child_that_dies_fails_the_job_with_a_503() -> None:
    with pytest.raises(ChildFailed, match="child process reading the graph died") as failed:
        in_child("normal", os._exit, 3)
    assert failed.value.status == 503


def _die(*args: object) -> None:
    os._exit(9)  # as the kernel's OOM killer would end it


def test_a_version_whose_child_died_is_tried_again_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_model_repo(tmp_path, models={}, lecture=True)
    make_large(monkeypatch)
    with monkeypatch.context() as dying:
        dying.setattr(version_folder, "read_graph_file", _die)
        repository = _load(root)
        entry = repository.entry("cifar10_cnn")
        assert entry.state is ModelState.UNAVAILABLE and "died" in entry.reason
    repository.poll()  # the files did not change
    assert repository.entry("cifar10_cnn").state is ModelState.READY


def test_the_childs_reason_for_no_layer_table_is_logged_by_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_model_repo(tmp_path, models={"tiny": [1]}, lecture=False)
    make_large(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="service.engine.version_folder"):
        layers = _load(root).entry("tiny").layers
    assert layers is not None and layers.table is None  # ReduceMean: no layer in the lecture's
    assert f"tiny v1: {layers.error}" in caplog.text


def test_a_graph_in_onnxruntimes_own_format_is_loaded_as_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "model.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(tiny_graph().SerializeToString(), options, ["CPUExecutionProvider"])
    ort_bytes = (tmp_path / "model.ort").read_bytes()
    assert ort_bytes[4:8] == b"ORTM"
    given = make_large(monkeypatch)
    session = onnxruntime_session(ort_bytes, ort.SessionOptions(), ["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    assert given == [ort_bytes]


def test_the_child_ignores_ctrl_c() -> None:
    assert in_child("normal", signal.getsignal, signal.SIGINT) == signal.SIG_IGN


def test_without_a_child_the_work_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_semaphores(*args: object, **kwargs: object) -> None:
        raise OSError("no /dev/shm")

    monkeypatch.setattr(large_graphs, "ProcessPoolExecutor", no_semaphores)
    assert in_child("normal", os.getpid) == os.getpid()


def test_a_graph_path_holds_the_parts_and_goes_with_the_block() -> None:
    with graph_path(b"not a ", b"graph") as path:
        assert path is not None and Path(path).read_bytes() == b"not a graph"
        assert os.readlink(path).startswith("/memfd:model.onnx")
    with contextlib.suppress(FileNotFoundError):  # its number closed, or another file's since
        assert not os.readlink(path).startswith("/memfd:model.onnx")


def test_onnxruntimes_refusal_of_a_large_graph_names_the_file_not_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(large_graphs, "LARGE_GRAPH_BYTES", 1)
    with pytest.raises(RuntimeError) as refused:
        onnxruntime_session(b"not a graph", ort.SessionOptions(), ["CPUExecutionProvider"])
    assert MODEL_FILE in str(refused.value) and "/proc/self/fd" not in str(refused.value)


def test_onnxruntimes_errors_hide_paths_on_the_server_and_keep_node_names(
    tmp_path: Path,
) -> None:
    message = f'bad "{tmp_path}/secret.bin" near "/conv1/Conv" or "/Conv" in "{tmp_path}"'
    hidden = large_graphs._QUOTED_PATH.sub(large_graphs._hidden, message)
    kept = 'near "/conv1/Conv" or "/Conv"'
    assert hidden == f'bad "(a path on the server)" {kept} in "(a path on the server)"'
