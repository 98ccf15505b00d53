"""A worker group's copies of what each version loaded (``last_good``): a repository started
while a served version's files are bad on disk (a restarted worker) loads the copy its siblings
still serve, with their reason, instead of passing over the version or failing; one copy per
change, whatever the number of workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.card import MODEL_FILE
from service.core.errors import ModelLoadFailed
from service.core.version_policy import VersionPolicy
from service.dataplane import build
from service.engine.last_good import CURRENT, LOCK, LastGood
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.apps import make_settings
from tests.support.models import CIFAR_CLASSES, make_model_repo, tiny_graph

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))
IMAGES = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
CONFIG = """
name: "cifar"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching { }
"""


def worker(root: Path, copies: Path | None) -> ModelRepository:
    """One worker's repository, loaded (``copies``: the group's folder; None: a lone process)."""
    repository = ModelRepository(root, CPU_ONLY, last_good=LastGood(copies) if copies else None)
    repository.load()
    return repository


def test_a_worker_started_after_a_served_versions_files_went_bad_serves_the_groups_copy(
    tmp_path: Path,
) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    copies = tmp_path / "workers" / "last-good"
    first = worker(root, copies)
    expected = first.get("tiny").run(IMAGES)
    (root / "tiny" / "2" / MODEL_FILE).write_bytes(b"not a model")  # the card's sha256 fails
    first.poll()
    assert "changed on disk" in first.entry("tiny", 2).reason  # still served, from memory

    alone = worker(root, None)  # without the copies: v2 fails, "latest 1" passes over to v1
    assert alone.entry("tiny", 2).state is ModelState.UNAVAILABLE
    assert alone.get("tiny").version == 1

    restarted = worker(root, copies)
    entry = restarted.entry("tiny", 2)
    assert entry.state is ModelState.READY and entry.reason == first.entry("tiny", 2).reason
    assert entry.path == root / "tiny" / "2"  # shown as the version on disk
    runtime = restarted.get("tiny")
    assert runtime.version == 2
    np.testing.assert_array_equal(runtime.run(IMAGES)["probabilities"], expected["probabilities"])
    restarted.poll()  # not retried until the files change again
    assert restarted.get("tiny") is runtime

    # Fixed on disk: every worker loads the new files, and they become the copy.
    (root / "tiny" / "2" / MODEL_FILE).write_bytes(
        (root / "tiny" / "1" / MODEL_FILE).read_bytes()
    )  # fmt: skip
    (root / "tiny" / "2" / "card.json").write_text(
        (root / "tiny" / "1" / "card.json").read_text().replace('"version": 1', '"version": 2')
    )
    for repository in (first, restarted):
        repository.poll()
        assert repository.get("tiny").version == 2 and not repository.entry("tiny", 2).reason
    (kept,) = [p for p in (copies / "tiny" / "2").iterdir() if p.is_dir()]  # the old one gone
    assert (copies / "tiny" / "2" / CURRENT).read_text() == kept.name


def test_a_bad_config_pbtxt_is_served_from_the_copy_with_its_labels_and_batching(
    tmp_path: Path,
) -> None:
    """A version served from config.pbtxt (no card) keeps the folder's files in its copy."""
    folder = tmp_path / "models" / "cifar"
    (folder / "1").mkdir(parents=True)
    onnx.save(tiny_graph(), str(folder / "1" / MODEL_FILE))
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "labels.txt").write_text("\n".join(CIFAR_CLASSES) + "\n")
    copies = tmp_path / "last-good"
    first = worker(tmp_path / "models", copies)
    (folder / "config.pbtxt").write_text(CONFIG.replace("max_batch_size: 8", "max_batch_size: x"))
    (folder / "labels.txt").write_text("cat\n")
    assert worker(tmp_path / "models", None).entry("cifar", 1).state is ModelState.UNAVAILABLE

    restarted = worker(tmp_path / "models", copies)
    runtime = restarted.get("cifar")
    assert runtime.card.class_names == first.get("cifar").card.class_names == CIFAR_CLASSES
    assert runtime.options == first.get("cifar").options  # config.pbtxt's batching
    assert runtime.options.max_images_per_request == 8
    assert "changed on disk" in restarted.entry("cifar", 1).reason


def test_one_copy_per_change_however_many_workers_load_it(tmp_path: Path) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    copies = tmp_path / "last-good"
    worker(root, copies)
    current = copies / "tiny" / "1" / CURRENT
    written = current.stat().st_mtime_ns, current.stat().st_ino
    for _ in range(3):
        worker(root, copies)
    assert (current.stat().st_mtime_ns, current.stat().st_ino) == written
    assert len([p for p in current.parent.iterdir() if p.name not in (CURRENT, LOCK)]) == 1


def test_a_versions_copy_goes_when_the_version_leaves_the_repository(tmp_path: Path) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1, 2], "other": [1]}, lecture=False)
    copies = tmp_path / "last-good"
    repository = ModelRepository(
        root, CPU_ONLY, VersionPolicy("all"), last_good=LastGood(copies)
    )  # fmt: skip
    repository.load()
    assert {p.relative_to(copies).as_posix() for p in copies.glob("*/*")} == {
        "tiny/1", "tiny/2", "other/1"
    }  # fmt: skip
    shutil.rmtree(root / "tiny" / "2")
    shutil.rmtree(root / "other")
    repository.poll()
    assert {p.relative_to(copies).as_posix() for p in copies.glob("*/*")} == {"tiny/1"}
    repository.close()  # a worker shutting down leaves them to its siblings
    assert (copies / "tiny" / "1" / CURRENT).is_file()


def test_a_copy_serves_only_a_worker_starting_while_the_others_serve_the_version(
    tmp_path: Path,
) -> None:
    """A running worker never loads a copy, and a copy goes once the version is no longer served:
    a version removed and published again half copied was served from the deleted one's copy,
    and a load call after an unload loaded a copy of files no worker served (a review)."""
    root = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    copies = tmp_path / "last-good"
    running = worker(root, copies)
    shutil.rmtree(root / "tiny" / "2")
    running.poll()
    (root / "tiny" / "2").mkdir()
    (root / "tiny" / "2" / MODEL_FILE).write_bytes(b"half copied")
    running.poll()
    for repository in (running, worker(root, copies)):
        assert repository.entry("tiny", 2).state is ModelState.UNAVAILABLE
        assert repository.get("tiny").version == 1

    running.unload_model("tiny")  # every worker unloads it: no one serves v1 any more
    (root / "tiny" / "1" / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelLoadFailed):
        running.load_model("tiny")
    started = worker(root, copies)
    assert started.entry("tiny", 1).state is ModelState.UNAVAILABLE


def test_a_lone_worker_keeps_no_copies_even_in_a_given_workers_dir(tmp_path: Path) -> None:
    """With one worker nothing would need them, and a folder given would keep them from one
    run to the next: a server started afresh served a past run's files (a review)."""
    repo = make_model_repo(tmp_path, lecture=False)
    settings = make_settings(repo, workers=1, workers_dir=tmp_path)
    assert build.model_repository(settings, CPU_ONLY).last_good is None
    two = settings.model_copy(update={"workers": 2})
    assert build.model_repository(two, CPU_ONLY).last_good is not None
