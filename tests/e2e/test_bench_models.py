"""``python -m bench models`` on the shipped repository: one measured line per shipped version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.core.card import read_card

ROOT = Path(__file__).resolve().parents[2]


def test_model_table_lists_every_shipped_version_with_its_card_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "models", "--seconds", "0.05", "--repeats", "1",
         "--no-write"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    shipped = sorted(d for d in (ROOT / "models").glob("*/[0-9]*") if d.is_dir())
    assert len(rows) == len(shipped) >= 1
    for version_dir, line in zip(shipped, rows, strict=True):
        card = read_card(version_dir)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == f"`{card.name}/{card.version}`"
        assert cells[2] == f"{card.metrics['test_accuracy']:.4f}"
        assert cells[3] == f"{card.layer_table['total_params']:,}"
        assert float(cells[6].replace(",", "")) > 0  # measured images/s
