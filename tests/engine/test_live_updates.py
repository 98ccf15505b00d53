"""Live updates in the repository: polling, the atomic swap, draining, failed and removed versions,
version policies, load and unload. ``poll()`` is called directly, so nothing waits on a timer."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.card import MODEL_FILE
from service.core.errors import ModelLoadFailed, ModelNotFound, ModelNotReady
from service.core.version_policy import VersionPolicy
from service.engine.leases import lease_scope
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.live_updates import (
    favouring_graph,
    publish_graph,
    rewrite_in_place,
    top1,
    write_version_atomically,
)
from tests.support.models import make_model_repo, tiny_graph, tiny_reference, write_model

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))
IMAGES = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def load(root: Path, policy: str = "latest") -> ModelRepository:
    repository = ModelRepository(root, CPU_ONLY, VersionPolicy.parse(policy))
    repository.load()
    return repository


def states(repository: ModelRepository, name: str = "tiny") -> dict[int, ModelState]:
    return {e.version: e.state for e in repository.versions(name)}


def reasons(repository: ModelRepository) -> dict[str, str]:
    return {f"{r['name']}/{r['version']}": r["reason"] for r in repository.index()}


def test_a_published_version_is_served_after_a_poll_and_the_old_one_drains_first(
    tmp_path: Path,
) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    with lease_scope():  # one request that took v1 before the switch
        old = repository.get("tiny")
        assert old.version == 1
        publish_graph(repo, "tiny", favouring_graph(3), tmp_path / "work")
        repository.poll()
        new = repository.get("tiny")
        assert new.version == 2 and top1(new.run(IMAGES)["probabilities"]) == [3] * 4
        # The request that started on v1 finishes on it: still open, still the v1 answers.
        assert not old.closed
        np.testing.assert_allclose(
            old.run(IMAGES)["probabilities"], tiny_reference(IMAGES), atol=1e-5
        )
    assert old.closed  # drained, then closed
    assert not new.closed
    assert states(repository) == {1: ModelState.UNLOADED, 2: ModelState.READY}
    repository.close()
    assert new.closed


def test_a_runtime_retired_without_holders_closes_at_once(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    old = repository.get("tiny")  # outside a request scope: not held
    write_model(repo, "tiny", 2)
    repository.poll()
    assert old.closed and repository.get("tiny").version == 2
    repository.close()


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("truncated", "onnxruntime cannot load the graph"),
        ("truncated_with_full_card", "sha256 of model.onnx is"),
        ("card_sha", "the card says " + "0" * 64),
    ],
)
def test_a_broken_new_version_leaves_the_old_serving_until_its_files_are_fixed(
    tmp_path: Path, breakage: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    good = tiny_graph().SerializeToString()
    if breakage == "truncated":
        folder = write_version_atomically(repo, "tiny", 2, good[: len(good) // 2])
    elif breakage == "truncated_with_full_card":
        sha = hashlib.sha256(good).hexdigest()  # the card of the whole graph
        folder = write_version_atomically(repo, "tiny", 2, good[: len(good) // 2], sha)
    else:
        folder = write_version_atomically(repo, "tiny", 2, good, "0" * 64)
    with caplog.at_level(logging.ERROR, logger="service.engine"):
        repository.poll()
        repository.poll()  # unchanged files are not tried again
    assert repository.get("tiny").version == 1
    assert states(repository) == {1: ModelState.READY, 2: ModelState.UNAVAILABLE}
    assert reason in reasons(repository)["tiny/2"]
    with pytest.raises(ModelNotReady, match="unavailable"):
        repository.get("tiny", 2)
    assert len([r for r in caplog.records if "tiny v2 not served" in r.getMessage()]) == 1

    rewrite_in_place(folder, favouring_graph(7))  # fixed: the next poll sees new files
    repository.poll()
    assert repository.get("tiny").version == 2
    assert top1(repository.get("tiny").run(IMAGES)["probabilities"]) == [7] * 4
    assert reasons(repository)["tiny/2"] == ""
    repository.close()


def test_a_served_version_changed_in_place_is_reloaded_and_a_broken_change_keeps_it(
    tmp_path: Path,
) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    rewrite_in_place(repo / "tiny" / "1", favouring_graph(2))
    repository.poll()
    assert top1(repository.get("tiny").run(IMAGES)["probabilities"]) == [2] * 4
    (repo / "tiny" / "1" / MODEL_FILE).write_bytes(b"half a graph")
    repository.poll()
    entry = repository.entry("tiny")
    assert entry.state is ModelState.READY and "changed on disk" in entry.reason
    assert top1(repository.get("tiny").run(IMAGES)["probabilities"]) == [2] * 4
    repository.close()


def test_removed_versions_fall_back_and_removed_models_disappear(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1, 2], "other": [1]}, lecture=False)
    repository = load(repo)
    v2 = repository.get("tiny")
    shutil.rmtree(repo / "tiny" / "2")
    repository.poll()
    assert v2.closed
    assert states(repository) == {1: ModelState.READY}
    other = repository.get("other")
    shutil.rmtree(repo / "other")
    repository.poll()
    assert other.closed and repository.names() == ["tiny"]
    with pytest.raises(ModelNotFound, match="unknown model 'other'"):
        repository.get("other")
    repository.close()


def test_a_vanished_repository_root_keeps_the_loaded_models(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    repo.rename(tmp_path / "elsewhere")
    repository.poll()
    assert repository.get("tiny").version == 1
    repository.close()


@pytest.mark.parametrize(
    ("policy", "ready"),
    [("latest", {3}), ("latest:2", {2, 3}), ("all", {1, 2, 3}), ("specific:1,3", {1, 3})],
)
def test_version_policy_from_the_setting(tmp_path: Path, policy: str, ready: set[int]) -> None:
    repository = load(make_model_repo(tmp_path, {"tiny": [1, 2, 3]}, lecture=False), policy)
    assert {v for v, s in states(repository).items() if s is ModelState.READY} == ready
    assert {v for v, s in states(repository).items() if s is ModelState.UNLOADED} == (
        {1, 2, 3} - ready
    )
    assert repository.get("tiny").version == max(ready)  # unversioned: the highest served
    for version in ready:
        assert repository.get("tiny", version).version == version
    repository.close()


def test_version_policy_from_config_json_is_applied_on_the_next_poll(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1, 2, 3], "other": [1, 2]}, lecture=False)
    repository = load(repo)
    assert states(repository)[2] is ModelState.UNLOADED
    config = repo / "tiny" / "config.json"
    config.write_text(json.dumps({"version_policy": {"latest": {"num_versions": 2}}}))
    repository.poll()
    assert states(repository) == {
        1: ModelState.UNLOADED,
        2: ModelState.READY,
        3: ModelState.READY,
    }
    config.write_text(json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
    repository.poll()
    assert states(repository)[1] is ModelState.READY
    assert repository.get("tiny").version == 1
    # A broken config keeps the policy in force and says so; the other model is untouched.
    config.write_text(json.dumps({"version_policy": {"newest": {}}}))
    repository.poll()
    assert repository.get("tiny").version == 1
    assert "unknown version_policy 'newest'" in reasons(repository)["tiny/1"]
    assert "using specific:1" in reasons(repository)["tiny/1"]
    assert states(repository, "other") == {1: ModelState.UNLOADED, 2: ModelState.READY}
    repository.close()


def test_latest_n_passes_over_failed_versions_and_specific_does_not(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    write_version_atomically(repo, "tiny", 3, b"garbage", "0" * 64)
    repository = load(repo, "latest:2")
    assert states(repository) == {
        1: ModelState.READY,
        2: ModelState.READY,
        3: ModelState.UNAVAILABLE,
    }
    repository.close()
    repository = load(repo, "specific:3")
    assert states(repository) == {
        1: ModelState.UNLOADED,
        2: ModelState.UNLOADED,
        3: ModelState.UNAVAILABLE,
    }
    with pytest.raises(ModelNotReady, match="version 3 is unavailable"):
        repository.get("tiny")
    repository.close()


def test_unload_stops_serving_until_load_and_polls_leave_it_unloaded(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    repository = load(repo)
    runtime = repository.get("tiny")
    repository.unload_model("tiny")
    assert runtime.closed
    assert states(repository) == {1: ModelState.UNLOADED, 2: ModelState.UNLOADED}
    assert reasons(repository)["tiny/2"] == "unloaded by a repository request"
    write_model(repo, "tiny", 3)
    repository.poll()
    assert states(repository)[3] is ModelState.UNLOADED
    with pytest.raises(ModelNotFound, match="not served"):
        repository.get("tiny")
    assert not repository.ready
    repository.load_model("tiny")
    assert repository.get("tiny").version == 3 and repository.ready
    repository.close()


def test_load_retries_failed_versions_and_reports_when_nothing_loads(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"good": [1]}, lecture=False)
    (repo / "broken").mkdir()
    write_version_atomically(repo, "broken", 1, b"garbage", "0" * 64)
    repository = load(repo)
    with pytest.raises(ModelLoadFailed, match=r"version 1: sha256 of model\.onnx"):
        repository.load_model("broken")
    with pytest.raises(ModelNotFound, match="no model folder 'nope'"):
        repository.load_model("nope")
    with pytest.raises(ModelNotFound):
        repository.load_model("../good")
    with pytest.raises(ModelNotFound):
        repository.unload_model("nope")
    repository.load_model("good")  # already served: loading again is harmless
    assert repository.get("good").version == 1
    repository.close()
