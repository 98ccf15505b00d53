"""A shipped model with a monitor reference on its card, for the monitor's tests: the reference is
computed as the export computes it (``quality.reference`` on the whole test split, through
onnxruntime with the served probabilities; ``bench.drift`` holds that and the shifted streams)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.drift import test_reference
from service.core.card import CARD_FILE, MODEL_FILE
from tests.support.servers import ROOT

SHIPPED = ROOT / "models" / "cifar10_cnn" / "1"  # the lecture model: the fastest shipped one


def add_model_with_reference(repo: Path, name: str) -> Path:
    """The shipped lecture model as ``name`` v1 in ``repo``, its card carrying the test split's
    reference. Returns the version folder."""
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    shutil.copyfile(SHIPPED / MODEL_FILE, folder / MODEL_FILE)
    card = json.loads((SHIPPED / CARD_FILE).read_text(encoding="utf-8"))
    card.update(name=name, reference=test_reference(SHIPPED))
    (folder / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    return folder
