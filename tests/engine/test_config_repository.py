"""A Triton model folder as it is: ``config.pbtxt`` + ``<version>/model.onnx`` and no card,
served from a card built in memory; a bad config makes the model UNAVAILABLE with its reason, and
fixing the file serves it again."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.card import CARD_FILE, IMAGE_CLASSIFIER, MODEL_FILE, TENSOR
from service.core.version_policy import VersionPolicy
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.models import CIFAR_CLASSES, make_model_repo, tiny_graph, tiny_reference

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))

# cifar10_cnn's graph (here the tiny one of the same shape) as a Triton user would describe it.
CIFAR_CONFIG = """
name: "cifar"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: { all { } }
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching { preferred_batch_size: [ 16 ] max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


def triton_folder(root: Path, name: str = "cifar", versions: tuple[int, ...] = (1, 2)) -> Path:
    """A model folder laid out as Triton's: config.pbtxt, labels.txt, <version>/model.onnx."""
    folder = root / name
    for version in versions:
        (folder / str(version)).mkdir(parents=True)
        onnx.save(tiny_graph(), str(folder / str(version) / MODEL_FILE))
    (folder / "config.pbtxt").write_text(CIFAR_CONFIG.replace('"cifar"', f'"{name}"'))
    (folder / "labels.txt").write_text("\n".join(CIFAR_CLASSES) + "\n")
    return folder


def load(root: Path) -> ModelRepository:
    repository = ModelRepository(root, CPU_ONLY)
    repository.load()
    return repository


def test_a_triton_folder_is_served_from_its_config_and_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = triton_folder(tmp_path)
    with caplog.at_level(logging.INFO):
        repository = load(tmp_path)
    assert {e.version: e.state for e in repository.versions("cifar")} == {
        1: ModelState.READY,
        2: ModelState.READY,
    }  # version_policy all
    assert repository.policy("cifar") == VersionPolicy("all")
    runtime = repository.get("cifar")
    card = runtime.card
    assert card.class_names == CIFAR_CLASSES
    assert [t.shape for t in card.inputs] == [[-1, 32, 32, 3]]
    model_bytes = (folder / "2" / MODEL_FILE).read_bytes()
    assert card.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert not card.layer_table and not card.metrics  # no evidence without a card
    options = runtime.options
    assert (options.max_images_per_request, options.max_batch_size) == (64, 16)
    assert options.dynamic_batching and options.max_batch_delay_ms == 0.5
    assert "count 2: one onnxruntime session per worker process" in caplog.text
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = runtime.run(images)
    np.testing.assert_allclose(out["probabilities"], tiny_reference(images), atol=1e-5)
    repository.close()


def test_without_dynamic_batching_each_request_runs_alone(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    config = (folder / "config.pbtxt").read_text()
    start = config.index("dynamic_batching")
    (folder / "config.pbtxt").write_text(config[:start] + config[config.index("instance_group") :])
    repository = load(tmp_path)
    assert not repository.get("cifar").options.dynamic_batching
    repository.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("max_batch_size: 64", "max_batch_size: 0"), "the graph's shape is [-1, 32, 32, 3]"),
        (("dims: [ 32, 32, 3 ]", "dims: [ -1, 32, 32, 3 ]"), "(the batch axis of max_batch"),
        (("TYPE_UINT8", "TYPE_FP32"), "input 'images' is FP32, the graph's is UINT8"),
        (('name: "logits"', 'name: "scores"'), "outputs ['probabilities', 'scores'] differ"),
        (("dims: [ 10 ] label", "dims: [ 11 ] label"), "the graph's shape is [-1, 10]"),
        (("max_batch_size: 64", "max_batch_size: 100000"), "max_batch_size 100000 is out of"),
        (("instance_group [ { kind: KIND_CPU", "instance_group [ { kind: KIND_GPU"), "KIND_GPU"),
        (("dynamic_batching {", "sequence_batching { } #"), "'sequence_batching' is not supported"),
        (('name: "cifar"', 'name: "other"'), "unexpected directory name 'cifar' for model 'other'"),
        (("version_policy", "garbage garbage"), "cannot be parsed"),
        (("version_policy", "#" * (1 << 20) + "\nversion_policy"), "over 1048576 bytes; refused"),
    ],
)
def test_a_bad_config_makes_the_model_unavailable_with_its_reason(
    tmp_path: Path, change: tuple[str, str], reason: str
) -> None:
    repo = make_model_repo(tmp_path, {"good": [1]}, lecture=False)
    path = triton_folder(repo) / "config.pbtxt"
    path.write_text(path.read_text().replace(*change, 1))
    repository = load(repo)
    entries = repository.versions("cifar")
    assert {e.state for e in entries} == {ModelState.UNAVAILABLE}
    assert all(reason in e.reason for e in entries), entries[0].reason
    assert repository.get("good").version == 1  # the server keeps serving the others
    repository.close()


def test_labels_that_do_not_fit_the_output_are_refused(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    (folder / "labels.txt").write_text("cat\ndog\n")
    entry = load(tmp_path).entry("cifar")
    assert entry.state is ModelState.UNAVAILABLE
    assert "has 10 values per item but 'labels.txt' has 2 labels" in entry.reason


def test_fixing_the_config_serves_the_model_on_the_next_poll(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    good = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(good + "ensemble_scheduling { }\n")
    repository = load(tmp_path)
    assert repository.entry("cifar").state is ModelState.UNAVAILABLE
    (folder / "config.pbtxt").write_text(good.replace("max_batch_size: 64", "max_batch_size: 32"))
    repository.poll()
    assert repository.entry("cifar").state is ModelState.READY
    assert repository.get("cifar").options.max_images_per_request == 32
    (folder / "labels.txt").write_text("\n".join(reversed(CIFAR_CLASSES)) + "\n")
    repository.poll()  # the labels file is part of the model too
    assert repository.get("cifar").card.class_names == CIFAR_CLASSES[::-1]
    repository.close()


def test_config_json_beside_config_pbtxt_is_refused(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    (folder / "config.json").write_text('{"version_policy": {"all": {}}}')
    entry = load(tmp_path).entry("cifar")
    assert entry.state is ModelState.UNAVAILABLE
    assert "both config.pbtxt and config.json" in entry.reason


def test_a_version_with_neither_card_nor_config_is_served_from_its_graph(tmp_path: Path) -> None:
    """Triton's auto-complete: what was "no card beside the model" is a tensor model now."""
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    (repo / "tiny" / "1" / CARD_FILE).unlink()
    repository = load(repo)
    card = repository.get("tiny").card
    assert card.kind == TENSOR and card.class_names == []
    assert [(t.name, t.datatype, t.shape) for t in card.inputs] == [
        ("images", "UINT8", [-1, 32, 32, 3])
    ]
    assert sorted(t.name for t in card.outputs) == ["logits", "probabilities"]
    repository.close()


def test_an_nhwc_config_with_labels_is_an_image_classifier_and_without_a_tensor_model(
    tmp_path: Path,
) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    repository = load(tmp_path)
    assert repository.get("cifar").card.kind == IMAGE_CLASSIFIER
    config = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config.replace("format: FORMAT_NHWC ", ""))
    repository.poll()
    card = repository.get("cifar").card
    assert card.kind == TENSOR and card.class_names == CIFAR_CLASSES  # labels kept
    repository.close()


def test_a_garbage_graph_beside_a_config_is_unavailable(tmp_path: Path) -> None:
    folder = triton_folder(tmp_path, versions=(1,))
    (folder / "1" / MODEL_FILE).write_bytes(b"not a graph")
    entry = load(tmp_path).entry("cifar")
    assert entry.state is ModelState.UNAVAILABLE
    assert "cannot read the graph" in entry.reason


def test_a_served_models_config_turning_bad_keeps_it_served_and_is_tried_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broken config.pbtxt takes away the batching the runtime was built with, so the
    version stayed stale after each failed reload: the poll retried it forever, holding the
    repository's lock and writing a line a try."""
    folder = triton_folder(tmp_path, versions=(1,))
    repository = load(tmp_path)
    runtime = repository.get("cifar")
    (folder / "config.pbtxt").write_text(CIFAR_CONFIG.replace("64", "x"))
    polled = threading.Thread(target=repository.poll, daemon=True)
    with caplog.at_level(logging.ERROR):
        polled.start()
        polled.join(10)
        assert not polled.is_alive(), "the poll never returned"
        repository.poll()  # the same files again: not tried again
    assert repository.get("cifar") is runtime
    assert "changed on disk" in repository.entry("cifar", 1).reason
    assert caplog.text.count("changed on disk and fails") == 1
    (folder / "config.pbtxt").write_text(CIFAR_CONFIG)  # fixed: loaded afresh
    repository.poll()
    assert repository.get("cifar") is not runtime and not repository.entry("cifar", 1).reason
