"""``bench.peer_training``: the bf16 recipe and Keras measured in pairs that take turns at going
first, the verdict the median of the pairs' ratios (one rate moves by a fifth between minutes on a
shared machine), and the block that shows the rounds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench import peer_training
from bench.blocks_peers import peer_training as training_block


def test_pairs_take_turns_and_the_verdict_is_their_median_ratio(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    bf16 = iter([4000.0, 3000.0, 5000.0])
    keras = iter([2000.0, 2500.0, 2000.0])

    def torch_rate(autocast: str, tmp: Path) -> dict[str, Any]:
        calls.append(f"torch-{autocast}")
        rate = 2400.0 if autocast == "none" else next(bf16)
        return {"rates": [rate - 100, rate, rate + 50], "how": f"timed {autocast}"}

    def keras_rate(npz: Path, epochs: int, tmp: Path) -> dict[str, Any]:
        calls.append("keras")
        return {"tf_version": "2.x", "epoch": epochs, "epochs": epochs,
                "images_per_s": next(keras)}  # fmt: skip

    monkeypatch.setattr(peer_training, "torch_rate", torch_rate)
    monkeypatch.setattr(peer_training, "keras_rate", keras_rate)
    monkeypatch.setattr(peer_training, "_write_keras_npz", lambda path: None)
    args = argparse.Namespace(train_rounds=3, keras_epochs=2)

    result = peer_training.training(args, tmp_path)

    assert calls == ["torch-none", "torch-bf16", "keras", "keras", "torch-bf16",
                     "torch-bf16", "keras"]  # fmt: skip
    assert [r["first"] for r in result["rounds"]] == ["torch", "keras", "torch"]
    ratios = [r["ratio"] for r in result["rounds"]]
    assert ratios == pytest.approx([2.0, 1.2, 2.5])
    assert result["ratio"] == pytest.approx(2.0)  # the median, not the ratio of medians (1.8)
    assert result["keras"]["images_per_s"] == 2000.0
    float32, bf16_row = result["torch"]
    assert float32["images_per_s"] == 2400.0 and float32["keras_ratio"] == pytest.approx(1.2)
    assert bf16_row["rates"] == [4000.0, 3000.0, 5000.0]
    assert bf16_row["images_per_s"] == 4000.0

    record = {"time": "t", "command": "python -m bench peers --train-only",
              "results": {"machine": "m", "training": result}}  # fmt: skip
    block = training_block(record)
    assert "| 2 | keras | 3,000 | 2,500 | x1.20 |" in block
    assert "median of the rounds' ratios: **x2.00**" in block
    assert "taking turns" in block


def test_the_block_still_shows_a_run_from_before_the_rounds() -> None:
    row = {"label": "bf16", "how": "h", "rates": [3.0, 4.0], "images_per_s": 3.5,
           "keras_ratio": 1.4}  # fmt: skip
    keras = {"tf_version": "2.x", "epoch": 2, "epochs": 2, "images_per_s": 2.5}
    old = {"torch": [row], "keras": keras}
    record = {"time": "t", "command": "c", "results": {"machine": "m", "training": old}}
    block = training_block(record)
    assert "x1.40" in block and "PyTorch's first" in block and "round" not in block
