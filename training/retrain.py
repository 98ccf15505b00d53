"""The retrain job's quality gate: publish a new version only if it is good enough and no worse.

The candidate and the served version are scored on the same test images (the served graph is run
by onnxruntime), so the comparison holds even on a subset. A rejected model is kept aside, with
its card and the reason, and never enters the repository's versions.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, read_card
from service.core.errors import InvalidCard
from training.publish import plain_fields, versions

REJECTED_DIR = ".rejected"  # hidden: the service never takes it for a model


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    candidate_accuracy: float
    min_accuracy: float
    max_regression: float
    served_version: int | None = None
    served_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_gate(
    candidate_accuracy: float,
    served_accuracy: float | None,
    *,
    min_accuracy: float,
    max_regression: float,
    served_version: int | None = None,
) -> GateResult:
    """Pass when accuracy >= ``min_accuracy`` and >= served accuracy - ``max_regression``."""
    args = (candidate_accuracy, min_accuracy, max_regression, served_version, served_accuracy)
    if candidate_accuracy < min_accuracy:
        reason = f"test accuracy {candidate_accuracy:.4f} is below the minimum {min_accuracy:.4f}"
        return GateResult(False, reason, *args)
    if served_accuracy is not None and candidate_accuracy < served_accuracy - max_regression:
        reason = (
            f"test accuracy {candidate_accuracy:.4f} is worse than served version "
            f"{served_version} ({served_accuracy:.4f}) by more than {max_regression:.4f}"
        )
        return GateResult(False, reason, *args)
    against = (
        f"; served version {served_version} scores {served_accuracy:.4f} on the same images"
        if served_accuracy is not None
        else "; no version is served yet"
    )
    reason = f"test accuracy {candidate_accuracy:.4f} >= minimum {min_accuracy:.4f}{against}"
    return GateResult(True, reason, *args)


def served_version(model_dir: Path) -> tuple[int, ModelCard] | None:
    """The highest version with a readable card: what the service serves by default."""
    for version in reversed(versions(model_dir)):
        try:
            return version, read_card(model_dir / str(version))
        except InvalidCard:
            continue  # the service does not serve it either
    return None


def keep_rejected(
    repository: Path, name: str, onnx_path: Path, fields: Mapping[str, Any], gate: GateResult
) -> Path:
    """Copy the candidate, its card and the gate's reason to ``<repository>/.rejected/``."""
    target = repository / REJECTED_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('+')[0]}+{suffix}")
    target.mkdir(parents=True)
    shutil.copyfile(onnx_path, target / MODEL_FILE)
    card = {**plain_fields(fields), "name": name, "version": 0, "quality_gate": gate.as_dict()}
    (target / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (target / "REJECTED.txt").write_text(gate.reason + "\n")
    return target
