"""The repository: scanning, version policy, card checks, provider fallback, the layer table."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.core.card import CARD_FILE, MODEL_FILE, sha256_file
from service.core.errors import ModelNotFound, ModelNotReady
from service.engine.providers import resolve_providers
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.models import (
    lecture_graph,
    make_model_repo,
    tiny_graph,
    tiny_reference,
    write_model,
)

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))


def load(root: Path, options: RuntimeOptions = CPU_ONLY) -> ModelRepository:
    repository = ModelRepository(root, options)
    repository.load()
    return repository


def test_highest_version_is_served_and_others_listed_unloaded(tmp_path: Path) -> None:
    repository = load(make_model_repo(tmp_path, {"tiny": [1, 2, 10]}, lecture=False))
    assert repository.names() == ["tiny"]
    states = {e.version: e.state for e in repository.versions("tiny")}
    assert states == {
        1: ModelState.UNLOADED,
        2: ModelState.UNLOADED,
        10: ModelState.READY,
    }  # 10 > 2 numerically, and the hidden .tmp-3 folder is ignored
    assert repository.get("tiny").version == 10
    assert repository.get("tiny", "10").version == 10
    with pytest.raises(ModelNotFound, match="not served"):
        repository.get("tiny", "1")
    with pytest.raises(ModelNotFound, match="no version 3"):
        repository.get("tiny", 3)
    repository.close()


def test_served_model_matches_a_numpy_reference(tmp_path: Path) -> None:
    repository = load(make_model_repo(tmp_path, {"tiny": [1]}, lecture=False))
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = repository.get("tiny").run(images)
    np.testing.assert_allclose(out["probabilities"], tiny_reference(images), atol=1e-5)
    assert out["logits"].shape == (5, 10)
    repository.close()


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("sha", "sha256 of model.onnx"),
        ("input_name", "card inputs ['pixels'] differ"),
        ("input_dtype", "must be UINT8"),
        ("output_shape", "card shape [-1, 11] differs from graph [-1, 10]"),
        ("classes", "names 3 classes"),
        ("wrong_folder", "lies in tiny/1"),
        ("no_model", "no model.onnx"),
        ("bad_json", "unreadable card"),
        ("garbage_graph", "onnxruntime cannot load the graph"),
    ],
)
def test_a_model_failing_its_checks_is_reported_and_others_still_served(
    tmp_path: Path, breakage: str, reason: str
) -> None:
    repo = make_model_repo(tmp_path, {"good": [1]}, lecture=False)
    folder = write_model(repo, "tiny", 1)
    card = json.loads((folder / CARD_FILE).read_text())
    if breakage == "sha":
        card["sha256"] = "0" * 64
    elif breakage == "input_name":
        card["inputs"][0]["name"] = "pixels"
    elif breakage == "input_dtype":
        card["inputs"][0]["datatype"] = "FP32"
    elif breakage == "output_shape":
        card["outputs"][0]["shape"] = [-1, 11]
    elif breakage == "classes":
        card["class_names"] = ["a", "b", "c"]
    elif breakage == "wrong_folder":
        card["version"] = 2
    elif breakage == "no_model":
        (folder / MODEL_FILE).unlink()
    elif breakage == "garbage_graph":
        (folder / MODEL_FILE).write_bytes(b"not a graph")
        card["sha256"] = sha256_file(folder / MODEL_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card))
    if breakage == "bad_json":
        (folder / CARD_FILE).write_text("{not json")

    repository = load(repo)
    entry = repository.entry("tiny")
    assert entry.state is ModelState.UNAVAILABLE
    assert reason in entry.reason
    with pytest.raises(ModelNotReady, match="unavailable"):
        repository.get("tiny")
    assert repository.get("good").version == 1
    assert repository.ready
    repository.close()


def test_card_shape_of_graph_with_other_batch_policy_is_refused(tmp_path: Path) -> None:
    graph = tiny_graph()
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # fixed batch of 4
    write_model(tmp_path, "fixed", 1, graph=graph)
    entry = load(tmp_path).entry("fixed")
    assert entry.state is ModelState.UNAVAILABLE
    assert "card shape [-1, 32, 32, 3] differs from graph [4, 32, 32, 3]" in entry.reason


def test_empty_or_missing_repository_serves_nothing_and_is_not_ready(tmp_path: Path) -> None:
    assert not load(tmp_path / "absent").ready
    assert load(tmp_path).names() == []
    with pytest.raises(ModelNotFound, match="unknown model 'x'"):
        load(tmp_path).get("x")


@pytest.mark.parametrize(
    "version", ["0", "-1", "abc", "1.0", "99999999999", "\u0661", "\uff11", "\u00b9", " 1"]
)  # Arabic-Indic, fullwidth and superscript 1, which str.isdigit and int() accept
def test_versions_from_urls_must_be_positive_integers(tmp_path: Path, version: str) -> None:
    repository = load(make_model_repo(tmp_path, {"tiny": [1]}, lecture=False))
    with pytest.raises(ModelNotFound):
        repository.get("tiny", version)


def test_version_folders_are_ascii_digits_only(tmp_path: Path) -> None:
    """A folder named in other digits ("\u0662", Arabic-Indic 2) is no version: int() would
    read it as 2 and let it stand in for the real one."""
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    (repo / "tiny" / "1").rename(repo / "tiny" / "\u0662")
    write_model(repo, "tiny", 1)
    repository = load(repo)
    assert [e.version for e in repository.versions("tiny")] == [1]
    assert repository.get("tiny").version == 1
    repository.close()


def test_missing_provider_falls_back_to_cpu_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = make_model_repo(tmp_path, {"a": [1], "b": [1]}, lecture=False)
    options = RuntimeOptions(providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        repository = load(repo, options)
    fallback = [r for r in caplog.records if "NoSuchExecutionProvider" in r.getMessage()]
    assert len(fallback) == 1  # once for the repository, not once per model
    assert "CPUExecutionProvider" in fallback[0].getMessage()
    assert repository.get("a").providers == ["CPUExecutionProvider"]
    usable, missing = resolve_providers(["CUDAExecutionProvider"])
    assert usable[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in usable:  # this machine has no CUDA build of onnxruntime
        assert missing == ["CUDAExecutionProvider"]
    repository.close()


def test_layer_table_of_the_lecture_graph_matches_the_lecture(tmp_path: Path) -> None:
    write_model(tmp_path, "cifar10_cnn", 1, graph=lecture_graph())
    report = load(tmp_path).entry("cifar10_cnn").layers
    assert report is not None and report.table is not None, report
    table = report.as_dict()
    assert table["total_params"] == 122_570
    assert [row["output_shape"] for row in table["layers"]] == [
        [None, 30, 30, 32],
        [None, 15, 15, 32],
        [None, 13, 13, 64],
        [None, 6, 6, 64],
        [None, 4, 4, 64],
        [None, 1024],
        [None, 64],
        [None, 10],
    ]
    assert [row["params"] for row in table["layers"]] == [896, 0, 18496, 0, 36928, 0, 65600, 650]
    # 13x13 pooled by 2 floors to 6 (Keras does the same); the graph and the formulas agree.
    assert table["layers"][3]["note"].startswith("fractional")
    assert not [n for n in table["notes"] if "the graph" in n]


def test_layer_table_reports_an_unreadable_graph_without_refusing_the_model(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "tiny", 1)  # ReduceMean has no lecture layer
    entry = load(tmp_path).entry("tiny")
    assert entry.state is ModelState.READY
    assert entry.layers is not None and "ReduceMean" in entry.layers.error


def test_a_loads_options_stay_through_polls_until_a_load_without_them(tmp_path: Path) -> None:
    """A config override's options survive the poller (a new version loads with them too) and
    a plain load goes back to the repository's."""
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    repository = load(repo)
    override = replace(CPU_ONLY, max_batch_size=4, max_images_per_request=8)
    repository.load_model("tiny", override)
    first = repository.get("tiny")
    assert first.options == override
    repository.poll()
    assert repository.get("tiny") is first  # unchanged files: not reloaded
    write_model(repo, "tiny", 2)
    repository.poll()
    assert repository.get("tiny").version == 2
    assert repository.get("tiny").options == override
    repository.load_model("tiny")
    assert repository.get("tiny").options == CPU_ONLY
    repository.close()


@pytest.mark.parametrize("file", [CARD_FILE, MODEL_FILE, "config.json"])
def test_a_fifo_in_place_of_a_repository_file_is_refused_without_blocking(
    tmp_path: Path, file: str
) -> None:
    """Opening a FIFO waits for a writer that never comes: the poll, every repository call
    waiting on it, a restarted worker and shutdown with it (the eleventh audit)."""
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    target = root / "tiny" / file if file == "config.json" else root / "tiny" / "1" / file
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    loaded: list[ModelRepository] = []
    worker = threading.Thread(target=lambda: loaded.append(load(root)), daemon=True)
    worker.start()
    worker.join(30)
    assert loaded, f"the repository's load blocked on a FIFO {file}"
    reasons = [entry["reason"] for entry in loaded[0].index()]
    assert any("not a regular file" in reason for reason in reasons), reasons
