"""Temperature scaling: the fit, the graph edit (logits untouched, probabilities softmax(z / T)),
the card's calibration evidence, and ``python -m training recalibrate`` on a published version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.card import CARD_FILE, MODEL_FILE, read_card, sha256_file
from service.core.errors import ExportError
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import ModelState
from tests.support.models import lecture_graph, tiny_graph, write_model
from training.__main__ import main
from training.calibration import (
    TEMPERATURE,
    check_temperature_graph,
    fit_temperature,
    graph_temperature,
    run_both,
    softmax,
    with_temperature,
)
from training.calibration_card import (
    RELIABILITY_FILE,
    HeldOut,
    add_to_card,
    calibrate,
    coverage,
    reencode,
)
from training.data import Split, load_cifar10
from training.export import INPUTS, OUTPUTS
from training.publish import publish


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_fit_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (20_000, 10))
    truth = 2.5
    cumulative = softmax(logits, truth).cumsum(axis=1)
    labels = (rng.random((len(logits), 1)) > cumulative).sum(axis=1).astype(np.int64)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.05)


def test_fit_of_a_model_no_better_than_chance_stays_bounded() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 5.0, (500, 10))
    labels = rng.integers(0, 10, 500)
    assert fit_temperature(logits, labels) == pytest.approx(20.0)


def test_fit_refuses_an_empty_slice() -> None:
    with pytest.raises(ExportError, match="held-out"):
        fit_temperature(np.zeros((0, 10)), np.zeros(0, np.int64))


def test_graph_keeps_logits_byte_identical_and_scales_the_probabilities(tmp_path: Path) -> None:
    source, calibrated = tmp_path / "source.onnx", tmp_path / "calibrated.onnx"
    onnx.save(tiny_graph(), str(source))
    with_temperature(source, calibrated, 0.5)
    images = _images(64)
    before, _ = run_both(source, images)
    logits, probabilities = run_both(calibrated, images)
    assert before.tobytes() == logits.tobytes()
    np.testing.assert_allclose(probabilities, softmax(logits, 0.5), atol=1e-6)
    assert not np.allclose(probabilities, softmax(logits), atol=1e-3)  # it did change them
    assert check_temperature_graph(source, calibrated, images, 0.5) <= 1e-6
    assert graph_temperature(calibrated) == 0.5 and graph_temperature(source) is None


def test_the_check_fails_when_the_graph_holds_another_temperature(tmp_path: Path) -> None:
    source, calibrated = tmp_path / "source.onnx", tmp_path / "calibrated.onnx"
    onnx.save(tiny_graph(), str(source))
    with_temperature(source, calibrated, 0.5)
    with pytest.raises(ExportError, match="differ from softmax"):
        check_temperature_graph(source, calibrated, _images(8), 0.7)


def test_recalibrating_replaces_the_temperature_instead_of_dividing_twice(tmp_path: Path) -> None:
    source, once, twice = (tmp_path / f"{n}.onnx" for n in ("source", "once", "twice"))
    onnx.save(tiny_graph(), str(source))
    with_temperature(source, once, 0.5)
    with_temperature(once, twice, 2.0)
    graph = onnx.load(str(twice)).graph
    assert [n.op_type for n in graph.node].count("Div") == 1
    assert [t.name for t in graph.initializer].count(TEMPERATURE) == 1
    check_temperature_graph(source, twice, _images(8), 2.0)


def test_a_graph_without_a_softmax_head_is_refused(tmp_path: Path) -> None:
    model = tiny_graph()
    model.graph.node[-1].op_type = "Sigmoid"
    del model.graph.node[-1].attribute[:]
    path = tmp_path / "sigmoid.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="not a Softmax"):
        with_temperature(path, tmp_path / "out.onnx", 2.0)


def test_the_service_serves_a_calibrated_graph_and_reads_its_layer_table(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "models", "cifar10_cnn", 1, graph=lecture_graph())
    with_temperature(folder / MODEL_FILE, folder / MODEL_FILE, 1.5)
    card = json.loads((folder / CARD_FILE).read_text())
    card["sha256"] = sha256_file(folder / MODEL_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card))
    repository = ModelRepository(
        tmp_path / "models", RuntimeOptions(providers=("CPUExecutionProvider",))
    )
    repository.load()
    entry = repository.entry("cifar10_cnn")
    assert entry.state is ModelState.READY, entry.reason
    assert entry.layers is not None and entry.layers.error == "", entry.layers
    out = repository.get("cifar10_cnn").run(_images(2))
    np.testing.assert_allclose(out["probabilities"], softmax(out["logits"], 1.5), atol=1e-6)


def test_coverage_counts_answered_images_and_their_accuracy() -> None:
    confidence = np.array([0.2, 0.5, 0.6, 0.95])
    correct = np.array([False, False, True, True])
    rows = coverage(confidence, correct, (0.0, 0.5, 0.9, 0.99))
    assert [r["coverage"] for r in rows] == [1.0, 0.75, 0.25, 0.0]
    assert [r["accuracy"] for r in rows] == [0.5, pytest.approx(2 / 3), 1.0, 1.0]


def test_reencoding_changes_pixels_more_at_lower_quality() -> None:
    images = _images(4)
    q90, q30 = reencode(images, 90), reencode(images, 30)
    assert q90.shape == images.shape and q90.dtype == np.uint8
    change = [np.abs(x.astype(int) - images).mean() for x in (q90, q30)]
    assert 0 < change[0] < change[1]


def _split(n: int, seed: int) -> Split:
    return Split(_images(n, seed), np.random.default_rng(seed).integers(0, 10, n))


def test_calibrate_writes_the_card_blocks_and_the_diagram(tmp_path: Path) -> None:
    graph = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(), str(graph))
    diagram = tmp_path / RELIABILITY_FILE
    blocks = calibrate(
        graph, graph, HeldOut(_split(200, 1), "200 test images"), _split(100, 2), diagram
    )
    c = blocks["calibration"]
    assert c["temperature"] == graph_temperature(graph)
    assert c["n_fit"] == 200 and c["fitted_on"] == "200 test images"
    assert len(c["reliability"]) == 10 and sum(b["count"] for b in c["reliability"]) == 100
    assert c["coverage"][0]["abstain_below"] == 0.0 and c["coverage"][0]["coverage"] == 1.0
    assert 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1
    assert diagram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reference = blocks["reference"]
    assert reference["n"] == 100 and sum(reference["class_frequencies"]) == pytest.approx(1.0)
    assert set(blocks["metrics"]) == {"test_accuracy_jpeg_q50", "test_accuracy_jpeg_q30"}


def test_without_a_held_out_slice_the_graph_keeps_its_probabilities(tmp_path: Path) -> None:
    graph = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(), str(graph))
    blocks = calibrate(graph, graph, HeldOut(None, "nothing"), _split(20, 2), tmp_path / "r.png")
    assert blocks["calibration"]["temperature"] == 1.0 and blocks["calibration"]["n_fit"] == 0
    assert blocks["calibration"]["ece_before"] == pytest.approx(blocks["calibration"]["ece_after"])


def test_publish_carries_the_diagram_and_the_card_keeps_the_new_blocks(tmp_path: Path) -> None:
    graph = tmp_path / "run" / MODEL_FILE
    graph.parent.mkdir()
    onnx.save(tiny_graph(), str(graph))
    blocks = calibrate(
        graph, graph, HeldOut(_split(50, 1), "x"), _split(30, 2), graph.parent / RELIABILITY_FILE
    )
    fields = {
        "class_names": ["a"] * 10,
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "metrics": {"test_accuracy": 0.1},
    }
    add_to_card(fields, blocks, graph)
    final = publish(tmp_path / "models", "net", graph, fields)
    assert (final / RELIABILITY_FILE).read_bytes() == (graph.parent / RELIABILITY_FILE).read_bytes()
    card = read_card(final)
    assert card.sha256 == sha256_file(final / MODEL_FILE)
    assert card.calibration["temperature"] == blocks["calibration"]["temperature"]
    assert card.reference == blocks["reference"]
    assert "test_accuracy_jpeg_q50" in card.metrics and card.metrics["test_accuracy"] == 0.1


def test_an_old_card_reads_with_empty_calibration_and_reference(tmp_path: Path) -> None:
    card = read_card(write_model(tmp_path, "tiny", 1))
    assert card.calibration == {} and card.reference == {}


def _published(tmp_path: Path, data: Path, val_size: int) -> Path:
    """A tiny version whose card records the run's recipe and the data set it was trained on."""
    identity = load_cifar10(data, tmp_path / "cache").identity
    training = {"config": {"val_size": val_size, "seed": 0, "limit_train": 0, "limit_test": 0}}
    dataset = {**identity, "n_val": val_size, "validation": f"{val_size} images (seed 0)"}
    return write_model(
        tmp_path / "models", "net", 1, card_changes={"training": training, "dataset": dataset}
    )


def _recalibrate(tmp_path: Path, data: Path, *extra: str) -> int:
    return main([
        "recalibrate", *extra, "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
        "--runs-dir", str(tmp_path / "runs"), "--repository", str(tmp_path / "models"),
    ])  # fmt: skip


def test_recalibrate_publishes_the_next_version_with_the_same_logits(
    image_folder: Path, tmp_path: Path
) -> None:
    source = _published(tmp_path, image_folder, val_size=10)
    assert _recalibrate(tmp_path, image_folder, "--model", "net") == 0
    new = source.parent / "2"
    card = read_card(new)
    assert card.sha256 == sha256_file(new / MODEL_FILE) and (new / RELIABILITY_FILE).is_file()
    assert card.calibration["derived_from"]["version"] == 1
    assert card.calibration["n_fit"] == 10 and "10 images (seed 0)" in card.calibration["fitted_on"]
    assert card.calibration["temperature"] == graph_temperature(new / MODEL_FILE)
    assert card.reference["n"] == 20  # the whole test split of the little image folder
    check_temperature_graph(
        source / MODEL_FILE, new / MODEL_FILE, _images(16), card.calibration["temperature"]
    )


def test_recalibrate_refuses_data_the_model_was_not_trained_on(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _published(tmp_path, image_folder, val_size=10)
    card = json.loads((source / CARD_FILE).read_text())
    card["dataset"]["sha256"] = "0" * 64
    (source / CARD_FILE).write_text(json.dumps(card))
    assert _recalibrate(tmp_path, image_folder, str(source)) == 1
    assert "not the data set the model was trained on" in capsys.readouterr().err
    assert not (source.parent / "2").exists()
