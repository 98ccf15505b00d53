"""The retrain job's quality gate: publish a new version only if it is good enough and no worse.

The candidate and the served version are scored on the same test images, and on the feedback
images held out of training (both graphs run by onnxruntime), so the comparison is paired: the
gate reports the difference with its standard error. A rejected model is kept aside, with its
card and the reason, and never enters the repository's versions.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, read_card
from service.core.errors import InvalidCard
from training.data import Split
from training.publish import plain_fields, versions

REJECTED_DIR = ".rejected"  # hidden: the service never takes it for a model


NOISE_Z = 1.96  # a difference beyond 1.96 standard errors: worse than chance explains (95 %)
MIN_HOLDOUT = 30  # fewer held-out feedback images than this cannot judge; block if trained on


@dataclass(frozen=True)
class Comparison:
    """Candidate and served model on the same images: a paired difference, as McNemar's test.

    Only the images one gets right and the other wrong (``candidate_only``, ``served_only``)
    carry information; ``standard_error`` is that of the difference in accuracy.
    """

    images: int
    candidate_accuracy: float
    served_accuracy: float
    candidate_only: int
    served_only: int

    @property
    def difference(self) -> float:
        return self.candidate_accuracy - self.served_accuracy

    @property
    def standard_error(self) -> float:
        n, b, c = self.images, self.candidate_only, self.served_only
        if n == 0:
            return 0.0
        return math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "difference": self.difference,
            "standard_error": self.standard_error,
        }


def compare_correct(candidate: np.ndarray, served: np.ndarray) -> Comparison:
    """``candidate``, ``served``: (N,) bool, right or wrong on the same N images."""
    n = len(candidate)
    return Comparison(
        images=n,
        candidate_accuracy=float(candidate.mean()) if n else 0.0,
        served_accuracy=float(served.mean()) if n else 0.0,
        candidate_only=int((candidate & ~served).sum()),
        served_only=int((served & ~candidate).sum()),
    )


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    candidate_accuracy: float
    min_accuracy: float
    max_regression: float
    served_version: int | None = None
    served_accuracy: float | None = None
    test: dict[str, Any] | None = None  # the paired comparison on the test split
    feedback: dict[str, Any] | None = None  # on the held-out feedback, and its verdict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def feedback_verdict(
    comparison: Comparison | None,
    max_regression: float,
    min_images: int = MIN_HOLDOUT,
    trained_on: int = 0,
) -> tuple[bool, str, dict[str, Any] | None]:
    """(blocks, what was found, the card's record) for the held-out feedback.

    The held-out set is small (hundreds), so the noise there is larger than the tolerance: the
    candidate is refused only when it is worse by more than ``max_regression`` plus 1.96 standard
    errors. Under ``min_images`` images the set cannot judge: that blocks when the candidate
    trained on ``trained_on`` > 0 feedback images (a labeller who kept its 20,000 images out of
    the held-out set had this gate pass a backdoored model as "too small to judge"), and
    decides nothing when it trained on none.
    """
    if comparison is None:
        return False, "", None
    record = comparison.as_dict()
    margin = max_regression + NOISE_Z * comparison.standard_error
    record["margin"] = margin
    where = (
        f"held-out feedback ({comparison.images} images): {comparison.candidate_accuracy:.4f} "
        f"vs served {comparison.served_accuracy:.4f}, difference {comparison.difference:+.4f} "
        f"+/- {NOISE_Z * comparison.standard_error:.4f}"
    )
    if comparison.images < min_images and trained_on > 0:
        record["verdict"] = f"too small to check {trained_on} feedback images trained on"
        return (
            True,
            (
                f"{where}: under the minimum of {min_images} held-out images, too few to check "
                f"what the {trained_on} feedback images trained on taught the candidate (label "
                "more, or retrain without --feedback; --min-holdout 0 waives it knowingly)"
            ),
            record,
        )
    if comparison.images < min_images:
        record["verdict"] = f"too small to judge (under {min_images} images)"
        return False, f"; {where}: too small to judge (under {min_images} images)", record
    if comparison.difference < -margin:
        record["verdict"] = "worse beyond the noise"
        return True, f"{where}: worse by more than {margin:.4f}", record
    record["verdict"] = "not worse beyond the noise"
    return False, f"; {where}: not worse beyond {margin:.4f}", record


def quality_gate(
    candidate_accuracy: float,
    served_accuracy: float | None,
    *,
    min_accuracy: float,
    max_regression: float,
    served_version: int | None = None,
    test: Comparison | None = None,
    feedback: Comparison | None = None,
    min_holdout: int = MIN_HOLDOUT,
    feedback_trained: int = 0,
) -> GateResult:
    """Pass when test accuracy >= ``min_accuracy`` and >= served accuracy - ``max_regression``
    (on the same images, as today's gate), and the candidate is not worse on the held-out
    feedback beyond the tolerance and its noise, which must be large enough to judge when
    ``feedback_trained`` feedback images were trained on (``feedback_verdict``)."""
    blocks, found, record = feedback_verdict(
        feedback, max_regression, min_holdout, feedback_trained
    )
    paired = test.as_dict() if test is not None else None
    args = (candidate_accuracy, min_accuracy, max_regression, served_version, served_accuracy)
    rest = (paired, record)
    if candidate_accuracy < min_accuracy:
        reason = f"test accuracy {candidate_accuracy:.4f} is below the minimum {min_accuracy:.4f}"
        return GateResult(False, reason, *args, *rest)
    if served_accuracy is not None and candidate_accuracy < served_accuracy - max_regression:
        reason = (
            f"test accuracy {candidate_accuracy:.4f} is worse than served version "
            f"{served_version} ({served_accuracy:.4f}) by more than {max_regression:.4f}"
        )
        return GateResult(False, reason, *args, *rest)
    if blocks:
        worse = record is not None and record["verdict"] == "worse beyond the noise"
        versus = f" than served version {served_version}" if worse else ""
        return GateResult(False, f"{found}{versus}", *args, *rest)
    noise = (
        f" (difference {test.difference:+.4f} +/- {NOISE_Z * test.standard_error:.4f})"
        if test is not None
        else ""
    )
    against = (
        f"; served version {served_version} scores {served_accuracy:.4f} on the same images{noise}"
        if served_accuracy is not None
        else "; no version is served yet"
    )
    reason = f"test accuracy {candidate_accuracy:.4f} >= minimum {min_accuracy:.4f}{against}"
    return GateResult(True, reason + found, *args, *rest)


def compare_graphs(candidate: Path, served: Path, split: Split) -> Comparison:
    """Both graphs through onnxruntime, as the service runs them, on the same images."""
    from training.evaluation import onnx_logits

    if not len(split):
        return compare_correct(np.zeros(0, bool), np.zeros(0, bool))
    return compare_correct(
        onnx_logits(candidate, split.images).argmax(1) == split.labels,
        onnx_logits(served, split.images).argmax(1) == split.labels,
    )


def describe(name: str, comparison: Comparison) -> str:
    """One line of the job's log: both accuracies, the difference, its noise, the disagreements."""
    c = comparison
    return (
        f"{name} ({c.images} images): candidate {c.candidate_accuracy:.4f}, served "
        f"{c.served_accuracy:.4f}, difference {c.difference:+.4f} +/- "
        f"{NOISE_Z * c.standard_error:.4f} (1.96 SE; only the candidate right on "
        f"{c.candidate_only}, only the served on {c.served_only})"
    )


def gate_candidate(
    candidate: Path,
    candidate_accuracy: float,
    model_dir: Path,
    test: Split,
    holdout: Split | None,
    limits: Mapping[str, Any],
    feedback_trained: int = 0,
) -> GateResult:
    """Score the candidate graph against the served version (the newest readable one) on the
    test split and the held-out feedback, print the figures, and decide.

    ``limits``: ``min_accuracy``, ``max_regression`` and ``min_holdout``;
    ``feedback_trained``: the feedback images the candidate trained on.
    """
    served = served_version(model_dir)
    test_cmp = feedback_cmp = None
    if served is not None:
        served_path = model_dir / str(served[0]) / MODEL_FILE
        test_cmp = compare_graphs(candidate, served_path, test)
        print(describe(f"Test split, served version {served[0]}", test_cmp))
        if holdout is not None:
            feedback_cmp = compare_graphs(candidate, served_path, holdout)
            print(describe("Held-out feedback", feedback_cmp))
    elif holdout is not None and len(holdout):
        from training.evaluation import onnx_logits

        accuracy = float(
            (onnx_logits(candidate, holdout.images).argmax(1) == holdout.labels).mean()
        )
        print(f"Held-out feedback ({len(holdout)} images): candidate {accuracy:.4f}; none served")
    return quality_gate(
        candidate_accuracy,
        test_cmp.served_accuracy if test_cmp is not None else None,
        min_accuracy=limits["min_accuracy"],
        max_regression=limits["max_regression"],
        served_version=served[0] if served else None,
        test=test_cmp,
        feedback=feedback_cmp,
        min_holdout=limits["min_holdout"],
        feedback_trained=feedback_trained,
    )


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
