"""docs/benchmarks.md is written by several benchmarks: each owns one marked section of it."""

from __future__ import annotations

from pathlib import Path

HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench`; each section says the command that produced it. The machine is\n"
    "shared and noisy: compare figures from one run (one section) only.\n"
)


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace (or append) the ``name`` section of ``doc``, leaving the others as they are."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else HEADER
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
