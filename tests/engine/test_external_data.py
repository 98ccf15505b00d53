"""A graph whose weights lie in external data files beside ``model.onnx`` (as exporters write
large models, and as Triton serves them) is served with its weights read from its version
folder, whatever the server's working directory, small or large (read in a child); a name that
leaves the folder is refused with a reason that names no path on the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.core.card import CARD_FILE, MODEL_FILE
from service.engine import large_graphs
from service.engine.activations import ActivationSessions
from service.engine.last_good import LastGood
from service.engine.named_rows import NamedRows
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from service.engine.work_pool import WorkPool
from tests.support.models import card_for, lecture_graph
from tests.support.tensor_models import affine_graph

OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",))
WEIGHTS = "weights.bin"


def save_external(graph: onnx.ModelProto, folder: Path, location: str = WEIGHTS) -> Path:
    """``model.onnx`` in ``folder`` with every initializer in ``location`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        graph,
        str(folder / MODEL_FILE),
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )
    return folder


def affine() -> onnx.ModelProto:
    """``affine_graph`` with its constants as raw bytes, which onnx can save as external data."""
    graph = affine_graph()
    for tensor in graph.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return graph


def _load(root: Path) -> ModelRepository:
    repository = ModelRepository(root, OPTIONS)
    repository.load()
    return repository


@pytest.fixture(params=["small", "large"])
def sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "large":
        monkeypatch.setattr(large_graphs, "LARGE_GRAPH_BYTES", 1)
    return str(request.param)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's working directory: an empty folder away from the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.usefixtures("sizes", "elsewhere")
def test_a_graph_alone_with_external_weights_is_served_from_its_folder(tmp_path: Path) -> None:
    folder = save_external(affine(), tmp_path / "models" / "affine" / "1")
    assert (folder / WEIGHTS).stat().st_size > 0
    entry = _load(tmp_path / "models").entry("affine")
    assert entry.state is ModelState.READY, entry.reason
    assert entry.runtime is not None
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = entry.runtime.run(NamedRows({"INPUT": rows}, 2))
    np.testing.assert_array_equal(outputs["OUTPUT"], 2 * rows + 1)


@pytest.mark.usefixtures("sizes", "elsewhere")
def test_a_carded_classifier_with_external_weights_serves_its_layers_and_feature_maps(
    tmp_path: Path,
) -> None:
    folder = save_external(lecture_graph(), tmp_path / "models" / "cifar10_cnn" / "1")
    card = card_for("cifar10_cnn", 1, folder / MODEL_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card.to_dict()))
    entry = _load(tmp_path / "models").entry("cifar10_cnn")
    assert entry.state is ModelState.READY, entry.reason
    assert entry.layers is not None and entry.layers.table is not None
    assert entry.runtime is not None and entry.card is not None
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    probabilities = entry.runtime.run(image[np.newaxis])["probabilities"]
    assert probabilities.shape == (1, 10) and abs(float(probabilities.sum()) - 1) < 1e-5

    sessions = ActivationSessions(OPTIONS, WorkPool(threads=1, max_waiting=0))
    session = sessions.get(entry.card, entry.path, entry.layers)
    maps = session.run(image, session.select(None))
    assert [m.values.shape for m in maps] == [m.layer.shape for m in maps] and maps


@pytest.mark.usefixtures("sizes")
def test_external_data_outside_the_version_folder_is_refused_naming_no_path(
    tmp_path: Path,
) -> None:
    folder = save_external(affine(), tmp_path / "models" / "affine" / "1", "outside.bin")
    (tmp_path / "secret.bin").write_bytes((folder / "outside.bin").read_bytes())
    (folder / "outside.bin").unlink()
    (folder / "outside.bin").symlink_to(tmp_path / "secret.bin")  # a link out of the folder
    entry = _load(tmp_path / "models").entry("affine")
    assert entry.state is ModelState.UNAVAILABLE
    assert entry.reason == "external data file 'outside.bin' lies outside the version folder"


@pytest.mark.usefixtures("elsewhere")
def test_a_workers_copy_reads_external_weights_from_the_version_folder(tmp_path: Path) -> None:
    """The copy a restarted worker loads holds ``model.onnx`` alone (``last_good``); its
    weights are the version folder's."""
    root = tmp_path / "models"
    folder = save_external(affine(), root / "affine" / "1")
    group = tmp_path / "workers"
    first = ModelRepository(root, OPTIONS, last_good=LastGood(group))
    first.load()
    assert first.entry("affine").state is ModelState.READY
    (folder / MODEL_FILE).write_bytes(b"not a graph any more")
    later = ModelRepository(root, OPTIONS, last_good=LastGood(group))
    later.load()
    entry = later.entry("affine")
    assert entry.state is ModelState.READY and "the previous" in entry.reason, entry.reason
    assert entry.runtime is not None
    rows = np.ones((1, 4), np.float32)
    outputs = entry.runtime.run(NamedRows({"INPUT": rows}, 1))
    np.testing.assert_array_equal(outputs["OUTPUT"], 3 * rows)


TRUNCATED_WHILE_SERVED = """
import os, sys
import numpy as np
from pathlib import Path
from service.engine.named_rows import NamedRows
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
root = Path(sys.argv[1])
repository = ModelRepository(root, RuntimeOptions(providers=("CPUExecutionProvider",)))
repository.load()
runtime = repository.get("affine")
rows = NamedRows({"INPUT": np.ones((1, 4), np.float32)}, 1)
before = runtime.run(rows)["OUTPUT"].tolist()
os.truncate(root / "affine" / "1" / "weights.bin", 0)
print(before, runtime.run(rows)["OUTPUT"].tolist())
"""


@pytest.mark.parametrize("size", ["small", "large"])
def test_weights_truncated_in_place_while_served_do_not_take_the_server_down(
    tmp_path: Path, size: str
) -> None:
    """onnxruntime left to read them maps the file: truncated, the next run died of SIGBUS (in
    a process of its own here, so that the test run survives it)."""
    save_external(affine(), tmp_path / "models" / "affine" / "1")
    script = TRUNCATED_WHILE_SERVED
    if size == "large":
        script = "import service.engine.large_graphs as g; g.LARGE_GRAPH_BYTES = 1\n" + script
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["[[3.0,", "3.0,", "3.0,", "3.0]]"] * 2


@pytest.mark.usefixtures("sizes")
def test_weights_rewritten_in_place_change_nothing_until_a_load(tmp_path: Path) -> None:
    folder = save_external(affine(), tmp_path / "models" / "affine" / "1")
    repository = _load(tmp_path / "models")
    runtime = repository.get("affine")
    rows = NamedRows({"INPUT": np.ones((1, 4), np.float32)}, 1)
    weights = (folder / WEIGHTS).read_bytes()
    with open(folder / WEIGHTS, "r+b") as same_file:  # in place: same inode, same size
        same_file.write(np.frombuffer(weights, np.float32).__mul__(10).tobytes())
    np.testing.assert_array_equal(runtime.run(rows)["OUTPUT"], 3 * np.ones((1, 4)))


@pytest.mark.usefixtures("sizes")
def test_an_external_data_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    folder = save_external(affine(), tmp_path / "models" / "affine" / "1")
    (folder / WEIGHTS).unlink()
    os.mkfifo(folder / WEIGHTS)  # opened for reading, it would wait for a writer for ever
    entry = _load(tmp_path / "models").entry("affine")
    assert entry.state is ModelState.UNAVAILABLE
    assert entry.reason == f"external data file '{WEIGHTS}': not a regular file"


def _branching_graph() -> onnx.ModelProto:
    """An If whose branches each hold a 4-value constant: a subgraph's initializers."""
    from onnx import TensorProto, helper

    def branch(name: str, value: float) -> onnx.GraphProto:
        constant = numpy_helper.from_array(np.full(4, value, np.float32), f"{name}_value")
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
        node = helper.make_node("Identity", [f"{name}_value"], ["y"])
        return helper.make_graph([node], name, [], [out], [constant])

    node = helper.make_node(
        "If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 2.0)
    )
    graph = helper.make_graph(
        [node],
        "branching",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.usefixtures("sizes")
def test_a_subgraph_keeping_its_data_in_an_external_file_is_refused(tmp_path: Path) -> None:
    """onnxruntime reads a subgraph's external data from its file whatever it is given in
    memory, and maps it: truncated while served, the server would die of SIGBUS."""
    folder = save_external(_branching_graph(), tmp_path / "models" / "branching" / "1")
    assert (folder / WEIGHTS).stat().st_size == 32
    entry = _load(tmp_path / "models").entry("branching")
    assert entry.state is ModelState.UNAVAILABLE
    assert "_value' of a subgraph or a sparse initializer keeps its data" in entry.reason
