"""The calibration table: each served model's temperature, ECE before/after and the accuracy/
coverage trade-off of ``ABSTAIN_BELOW``, all from the cards (measured on the test split by the
export or ``python -m training recalibrate``; nothing is re-run here).

    python -m bench calibration [--repository models] [--no-write]

Writes ``docs/results/calibration.json``, from which docs/monitoring.md's tables are rendered.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.publish import publish
from bench.results import ROOT
from service.core.card import ModelCard, read_card


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--no-write", action="store_true", help="print only")


def served_versions(repository: Path) -> list[Path]:
    """The newest version folder of each model: what the default 'latest' policy serves."""
    newest: dict[str, Path] = {}
    for d in sorted(repository.glob("*/[0-9]*"), key=lambda p: int(p.name)):
        if d.is_dir() and d.name.isdigit() and not d.parent.name.startswith("."):
            newest[d.parent.name] = d
    return [newest[name] for name in sorted(newest)]


def card_row(card: ModelCard) -> dict[str, Any]:
    """One model's calibration figures as its card states them."""
    c = card.calibration
    source = c.get("derived_from", {})
    return {
        "model": f"{card.name}/{card.version}",
        "derived_from": f"{source['name']}/{source['version']}" if source else None,
        "temperature": c.get("temperature"),
        "n_fit": c.get("n_fit"),
        "fitted_on": c.get("fitted_on"),
        "ece_before": c.get("ece_before"),
        "ece_after": c.get("ece_after"),
        "test_nll_before": c.get("test_nll_before"),
        "test_nll_after": c.get("test_nll_after"),
        "test_accuracy": card.metrics.get("test_accuracy"),
        "test_accuracy_jpeg_q50": card.metrics.get("test_accuracy_jpeg_q50"),
        "test_accuracy_jpeg_q30": card.metrics.get("test_accuracy_jpeg_q30"),
        "reliability_diagram": f"{card.name}/{card.version}/{c['reliability_diagram']}"
        if c.get("reliability_diagram")
        else None,
        "coverage": c.get("coverage", []),
    }


def main(args: argparse.Namespace) -> None:
    rows = [card_row(read_card(d)) for d in served_versions(args.repository)]
    publish("calibration", {"rows": rows}, args.no_write)
