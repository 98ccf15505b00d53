"""docs/monitoring.md's calibration tables, drawn from ``docs/results/calibration.json`` (which
``python -m bench calibration`` writes from the served models' cards)."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def _f(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def calibration(record: Record) -> str:
    """Temperature, ECE and NLL before/after, on the test split, one row per served model."""
    lines = [
        "| model (from) | T | fitted on | test ECE before | after | test NLL before | after | "
        "accuracy: clean | JPEG q50 | q30 | reliability diagram |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]["rows"]:
        source = f" (from `{r['derived_from']}`)" if r["derived_from"] else ""
        diagram = r["reliability_diagram"]
        link = f"[png](../models/{diagram})" if diagram else "no calibration in the card"
        lines.append(
            f"| `{r['model']}`{source} | {_f(r['temperature'])} | {r['n_fit'] or 0} held-out "
            f"training images | {_f(r['ece_before'])} | {_f(r['ece_after'])} | "
            f"{_f(r['test_nll_before'])} | {_f(r['test_nll_after'])} | "
            f"{_f(r['test_accuracy'])} | {_f(r['test_accuracy_jpeg_q50'])} | "
            f"{_f(r['test_accuracy_jpeg_q30'])} | {link} |"
        )
    return "\n".join(lines)


def coverage(record: Record) -> str:
    """Per ``ABSTAIN_BELOW`` threshold and served model: the share of test images answered and
    the accuracy on those."""
    rows = [r for r in record["results"]["rows"] if r["coverage"]]
    head = " | ".join(f"`{r['model']}`: answered, accuracy" for r in rows)
    lines = [f"| ABSTAIN_BELOW | {head} |", "|---|" + "---|" * len(rows)]
    thresholds = [c["abstain_below"] for c in rows[0]["coverage"]] if rows else []
    for i, t in enumerate(thresholds):
        cells = [
            f"{r['coverage'][i]['coverage']:.1%}, {r['coverage'][i]['accuracy']:.4f}" for r in rows
        ]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
