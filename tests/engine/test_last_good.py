"""A worker group's copies of what each version loaded (``last_good``): a repository started
while a served version's files are bad on disk (a restarted worker) loads the copy its siblings
still serve, with their reason, instead of passing over the version or failing; one copy per
change, whatever the number of workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.__main__ import (
    ALIVE_FILE,
    WORKERS_DIR_PREFIX,
    hold_alive,
    sweep_dead_workers_dirs,
)
from service.core.card import MODEL_FILE
from service.core.errors import ModelLoadFailed
from service.core.version_policy import VersionPolicy
from service.dataplane import build
from service.engine.last_good import CURRENT, GRACE_S, LastGood
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import Loaded, ModelState
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

    # Fixed on disk (the same files as first published): every worker loads them again.
    (root / "tiny" / "2" / MODEL_FILE).write_bytes(
        (root / "tiny" / "1" / MODEL_FILE).read_bytes()
    )  # fmt: skip
    (root / "tiny" / "2" / "card.json").write_text(
        (root / "tiny" / "1" / "card.json").read_text().replace('"version": 1', '"version": 2')
    )
    for repository in (first, restarted):
        repository.poll()
        assert repository.get("tiny").version == 2 and not repository.entry("tiny", 2).reason
    in_force = (copies / "tiny" / "2" / CURRENT).read_text()
    LastGood(copies).prune({"tiny": {1, 2}}, now=time.time() + GRACE_S + 1)  # the old one goes
    assert [p.name for p in (copies / "tiny" / "2").iterdir() if p.is_dir()] == [in_force]


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
    assert len([p for p in current.parent.iterdir() if p.name != CURRENT]) == 1


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
    repository.poll()  # out of force at once; the files go after the grace
    assert {p.relative_to(copies).as_posix() for p in copies.glob("*/*/current")} == {
        "tiny/1/current"
    }  # fmt: skip
    repository.last_good.prune({"tiny": {1}}, now=time.time() + GRACE_S + 1)  # type: ignore[union-attr]
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


def test_a_starting_worker_loads_as_the_group_calls_left_it(tmp_path: Path) -> None:
    """A load's config override and an unload are in force from a starting worker's first load:
    it built the copy with the repository's batching and only then applied the override (a
    reload from the bad files, which kept the copy), so it took 4-image batches the other
    refused; and it loaded and kept a copy of a model the group had unloaded, which a later
    start served (a second review)."""
    root = make_model_repo(tmp_path, {"tiny": [1], "other": [1]}, lecture=False)
    copies = tmp_path / "last-good"
    running = worker(root, copies)
    override = replace(CPU_ONLY, max_images_per_request=2, max_batch_size=2)
    running.load_model("tiny", override)
    running.unload_model("other")
    (root / "tiny" / "1" / MODEL_FILE).write_bytes(b"not a model")
    shutil.rmtree(copies / "other")  # what a worker that crashed while starting left is moot
    starting = ModelRepository(root, CPU_ONLY, last_good=LastGood(copies))
    starting.load(unloaded={"other"}, overrides={"tiny": override})
    assert starting.get("tiny").options == running.get("tiny").options == override
    assert starting.entry("other", 1).state is ModelState.UNLOADED
    assert not (copies / "other").exists()  # nothing loaded, nothing kept


def test_letting_a_copy_go_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error from the copies' folder (a sibling pruning it) escaped an unload: the runtimes
    after it were never retired or closed, and a poll stopped there (a second review)."""
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    copies = tmp_path / "last-good"
    running = worker(root, copies)
    runtime = running.get("tiny")

    def refused(path: object, *args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "removed meanwhile", str(path))

    monkeypatch.setattr(os, "unlink", refused)
    running.unload_model("tiny")
    assert runtime.closed
    LastGood(copies).prune({}, now=time.time() + GRACE_S + 1)  # nor does pruning


def test_a_copy_out_of_force_stays_its_grace_for_a_worker_loading_it(tmp_path: Path) -> None:
    """Copies change without a lock: a key's folder is written once, and one replaced stays
    ``GRACE_S`` for a worker that read its key; then it goes, with a crashed write's leftovers."""
    copies, where = LastGood(tmp_path), tmp_path / "m" / "1"
    first, second = Loaded(b"one", "d1", None), Loaded(b"two", "d2", None)
    copies.keep("m", 1, first)
    copies.keep("m", 1, second)
    (where / ".tmp-999999-current").write_text("x")  # a write killed before its rename
    assert (where / CURRENT).read_text() == second.key() and (where / first.key()).is_dir()
    copies.prune({"m": {1}})
    assert (where / first.key()).is_dir()  # within its grace
    copies.prune({"m": {1}}, now=time.time() + GRACE_S + 1)
    assert sorted(p.name for p in where.iterdir()) == sorted([CURRENT, second.key()])
    copies.forget("m", 1)
    copies.prune({"m": {1}}, now=time.time() + GRACE_S + 1)
    assert not where.exists() and not where.parent.exists()


def test_a_killed_servers_workers_folder_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """A server killed before its clean-up (SIGKILL, the OOM killer) left its folder and its
    copies of the models in TMPDIR for good; judged by the supervisor's pid, the sweep removed
    a live server's folder seen from another pid namespace, or one whose workers outlived a
    killed supervisor (the reviews). A folder is a live server's while any process holds its
    ``.alive``."""
    gone, live = (tmp_path / f"{WORKERS_DIR_PREFIX}{n}-abc" for n in (1, 2))
    older = tmp_path / "service-workers-abc_1234"  # mkdtemp's own names, before the pid
    for folder in (gone, live, older):
        (folder / "last-good").mkdir(parents=True)
    hold_alive(gone).close()  # its server is gone: nothing holds it
    held = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(live / ALIVE_FILE)], stdout=subprocess.PIPE
    )  # a worker of a live server, in another process
    try:
        assert held.stdout is not None and held.stdout.readline() == b"held\n"
        sweep_dead_workers_dirs(tmp_path)
        assert not gone.exists() and live.exists() and older.exists()
    finally:
        held.kill()
        held.wait()
    sweep_dead_workers_dirs(tmp_path)
    assert not live.exists()


HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a+b")
fcntl.flock(f, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""


def test_a_starting_worker_builds_the_copy_as_the_others_run_it(tmp_path: Path) -> None:
    """A load whose override came after the files went bad left the others' runtime as it was,
    though the group recorded the override: a worker started then built the copy with it, and
    refused batches the others took (a third review). The copy carries its batching."""
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    copies = tmp_path / "last-good"
    running = worker(root, copies)
    (root / "tiny" / "1" / MODEL_FILE).write_bytes(b"not a model")
    override = replace(CPU_ONLY, max_images_per_request=2, max_batch_size=2)
    running.load_model("tiny", override)  # kept what it ran: the new files fail
    assert running.get("tiny").options.max_images_per_request == 1024
    starting = ModelRepository(root, CPU_ONLY, last_good=LastGood(copies))
    starting.load(overrides={"tiny": override})
    assert starting.get("tiny").options == running.get("tiny").options
