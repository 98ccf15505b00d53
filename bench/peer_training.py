"""The lecture recipe's training rate against its Keras original (``../shared/peers/keras_seed.py``)
for ``python -m bench peers``, in rounds that take turns.

One process after another, each rate moves by a fifth between neighbouring minutes on this shared
machine (docs/benchmarks.md, "Training against Keras"), more than the 1.5x target's margin; so the
bf16 recipe and Keras are measured in pairs, ``--train-rounds`` of them, the first of each pair
alternating, and the verdict is the median of the pairs' ratios. float32 is measured once, as
context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.peer_envs import PEERS, ensure_venv
from bench.results import ROOT


def torch_rate(autocast: str, tmp: Path) -> dict[str, Any]:
    """The lecture recipe's training rate under ``autocast``, by ``python -m bench train``."""
    out = tmp / f"torch-{autocast}.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--steps", "300", "--repeats", "3",
         "--autocast", autocast, "--json", str(out), "--no-write", "--no-onnx"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"bench train failed: {result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(out.read_text())
    return measured


def keras_rate(npz: Path, epochs: int, tmp: Path) -> dict[str, Any]:
    """keras_seed.py's training rate: its last epoch's training part (the first epoch carries
    tf.function's tracing)."""
    keras_json = tmp / "keras.json"
    result = subprocess.run(
        [str(ensure_venv("keras")), str(PEERS / "keras_seed.py"), "--npz", str(npz),
         "--epochs", str(epochs), "--json", str(keras_json)],
        capture_output=True, text=True, timeout=1800, cwd=tmp,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"keras_seed.py failed: {result.stderr[-3000:]}")
    keras = json.loads(keras_json.read_text())
    last = keras["epochs"][-1]
    return {"tf_version": keras["tf_version"], "epoch": last["epoch"],
            "epochs": len(keras["epochs"]), "images_per_s": last["steps_per_s"] * 32}  # fmt: skip


def training(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Training images/s: float32 once, then ``args.train_rounds`` pairs of the bf16 recipe and
    Keras, taking turns at going first; each row's figure is the median of its measurements."""
    npz = tmp / "cifar10.npz"
    _write_keras_npz(npz)
    float32 = torch_rate("none", tmp)
    rounds: list[dict[str, Any]] = []
    keras: dict[str, Any] = {}
    how = ""  # how bench train timed a bf16 round
    for n in range(args.train_rounds):
        order = ("torch", "keras") if n % 2 == 0 else ("keras", "torch")
        found: dict[str, Any] = {}
        for side in order:
            if side == "torch":
                measured = torch_rate("bf16", tmp)
                found["bf16"], how = statistics.median(measured["rates"]), measured["how"]
            else:
                keras = keras_rate(npz, args.keras_epochs, tmp)
                found["keras"] = keras["images_per_s"]
        ratio = found["bf16"] / found["keras"]
        rounds.append({"first": order[0], **found, "ratio": ratio})
    keras_median = statistics.median(r["keras"] for r in rounds)
    bf16 = [r["bf16"] for r in rounds]
    rows = [
        _row("float32", float32["how"], float32["rates"], keras_median),
        {**_row("bf16 autocast", f"median of {len(rounds)} rounds' medians, each {how}",
                bf16, keras_median), "per": "round"},
    ]  # fmt: skip
    return {
        "torch": rows,
        "keras": {**keras, "images_per_s": keras_median},
        "rounds": rounds,
        "ratio": statistics.median(r["ratio"] for r in rounds),
    }


def _row(label: str, how: str, rates: list[float], keras: float) -> dict[str, Any]:
    rate = statistics.median(rates)
    return {"label": label, "how": how, "rates": rates, "images_per_s": rate,
            "keras_ratio": rate / keras}  # fmt: skip


def _write_keras_npz(path: Path) -> None:
    from training.data import load_cifar10

    data = load_cifar10(ROOT / "data" / "cifar10-jpeg", ROOT / ".cache")
    np.savez(path, x_train=data.train.images, y_train=data.train.labels,
             x_test=data.test.images, y_test=data.test.labels)  # fmt: skip
