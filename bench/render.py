"""Rewrite every rendered block and figure of README.md and docs/*.md from docs/results/*.json.

    python -m bench render            # rewrite the pages
    python -m bench render --check    # list stale pages and exit 1 (the docs test does this)

A block is ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` on lines of their own, drawn by
``bench.blocks.BLOCKS[NAME]``; a figure in prose is ``<!-- figure NAME -->...<!-- /figure -->``,
drawn by ``bench.figures.FIGURES[NAME]``. Everything between the markers is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bench.blocks import BLOCKS
from bench.figures import FIGURES
from bench.results import RESULTS_DIR, ROOT

BLOCK = re.compile(r"^<!-- ([\w-]+):begin -->\n(?:.*?\n)??<!-- \1:end -->$", re.S | re.M)
EMPTY_CELL = re.compile(r"(?<=\|) {2}(?=\|)")  # an empty table cell is written "| |"
FIGURE = re.compile(r"<!-- figure ([\w.-]+) -->(.*?)<!-- /figure -->")


class Records:
    """The results records, read from ``directory`` once each, on first use."""

    def __init__(self, directory: Path = RESULTS_DIR) -> None:
        self.directory = directory
        self._read: dict[str, dict[str, Any]] = {}

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name not in self._read:
            path = self.directory / f"{name}.json"
            if not path.exists():
                raise LookupError(f"no {path.name} in {self.directory} to render from")
            self._read[name] = json.loads(path.read_text())
        return self._read[name]


def render_text(text: str, records: Records, page: str = "") -> str:
    """``text`` with every block and figure drawn afresh from ``records``."""

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise LookupError(f"{page}: no renderer for the block {name!r} (bench.blocks)")
        source, draw = BLOCKS[name]
        body = EMPTY_CELL.sub(" ", draw(records[source]).strip())
        return f"<!-- {name}:begin -->\n{body}\n<!-- {name}:end -->"

    def figure(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in FIGURES:
            raise LookupError(f"{page}: no renderer for the figure {name!r} (bench.figures)")
        source, draw = FIGURES[name]
        return f"<!-- figure {name} -->{draw(records[source])}<!-- /figure -->"

    return FIGURE.sub(figure, BLOCK.sub(block, text))


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold rendered figures: the README and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_all(check: bool = False, root: Path = ROOT, results: Path = RESULTS_DIR) -> list[Path]:
    """Re-render every page; returns those that changed (with ``check``: that would change, and
    nothing is written)."""
    records = Records(results)
    changed = []
    for page in pages(root):
        text = page.read_text()
        fresh = render_text(text, records, str(page.relative_to(root)))
        if fresh != text:
            changed.append(page.relative_to(root))
            if not check:
                page.write_text(fresh)
    return changed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="list stale pages; exit 1 if any")


def main(args: argparse.Namespace) -> None:
    changed = render_all(check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'rendered'}: {path}")
    if args.check and changed:
        raise SystemExit(1)
