"""Tensor models in the engine: the card's kind, the serving contract, named inputs through the
runtime and the batcher (joined per input along axis 0, split back per request)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from service.core.card import CARD_FILE, IMAGE_CLASSIFIER, TENSOR, ModelCard, read_card
from service.core.errors import InvalidCard
from service.engine.batcher import DynamicBatcher, Outputs
from service.engine.named_rows import NamedRows
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import load_version
from tests.support.tensor_models import FIXED, SIMPLE, simple_inputs, tensor_repository

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tensor_repository(tmp_path_factory.mktemp("tensor"))


def test_a_card_without_kind_is_an_image_classifier(repo: Path) -> None:
    assert read_card(repo / "tiny" / "1").kind == IMAGE_CLASSIFIER
    card = read_card(repo / SIMPLE / "1")
    assert card.kind == TENSOR and card.class_names == []


def test_a_card_with_an_unknown_kind_is_refused(repo: Path) -> None:
    data = json.loads((repo / SIMPLE / "1" / CARD_FILE).read_text())
    with pytest.raises(InvalidCard, match="'kind' must be one of"):
        ModelCard.from_dict({**data, "kind": "detector"})
    with pytest.raises(InvalidCard, match="'class_names' must be a list of strings"):
        ModelCard.from_dict({**data, "class_names": [1]})


def test_a_tensor_card_repeating_a_name_is_refused(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / SIMPLE / "1"
    folder.mkdir(parents=True)
    for name in ("model.onnx", CARD_FILE):
        (folder / name).write_bytes((repo / SIMPLE / "1" / name).read_bytes())
    data = json.loads((folder / CARD_FILE).read_text())
    data["inputs"][1]["name"] = "INPUT0"
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(InvalidCard, match="repeat a name"):
        load_version(SIMPLE, 1, folder, CPU_ONLY)


def test_the_runtime_runs_named_inputs_batched_or_not(repo: Path) -> None:
    first, second = simple_inputs(rows=3)
    _, simple, _ = load_version(SIMPLE, 1, repo / SIMPLE / "1", CPU_ONLY)
    _, fixed, _ = load_version(FIXED, 1, repo / FIXED / "1", CPU_ONLY)
    try:
        assert simple.batched and not fixed.batched
        out = simple.run(NamedRows({"INPUT0": first, "INPUT1": second}, 3))
        np.testing.assert_array_equal(out["OUTPUT1"], first - second)
        out = fixed.run(NamedRows({"INPUT0": first[0], "INPUT1": second[0]}, 1))
        np.testing.assert_array_equal(out["OUTPUT0"], first[0] + second[0])
    finally:
        simple.close()
        fixed.close()


def test_named_rows_slice_and_join_every_input_together() -> None:
    first, second = simple_inputs(rows=5)
    rows = NamedRows({"INPUT0": first, "INPUT1": second}, 5)
    head, tail = rows[:2], rows[2:]
    assert (len(head), len(tail)) == (2, 3)
    joined = NamedRows.concatenate([head, tail])
    np.testing.assert_array_equal(joined.arrays["INPUT1"], second)


def test_the_batcher_joins_named_inputs_and_hands_back_each_requests_rows() -> None:
    batches: list[int] = []

    def add(rows: NamedRows) -> Outputs:
        time.sleep(0.02)  # so that requests pile up behind the first run
        batches.append(len(rows))
        return {"OUTPUT0": rows.arrays["INPUT0"] + rows.arrays["INPUT1"]}

    batcher = DynamicBatcher(add, max_batch_size=64)
    requests = [simple_inputs(rows=n, seed=n) for n in (1, 3, 2, 5, 1, 4)]

    async def main() -> list[Outputs]:
        named = [NamedRows({"INPUT0": a, "INPUT1": b}, len(a)) for a, b in requests]
        return await asyncio.gather(*(batcher.submit(r) for r in named))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    for (a, b), result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["OUTPUT0"], a + b)
    assert max(batches) > 1 and sum(batches) == 16
