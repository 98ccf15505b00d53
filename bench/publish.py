"""Report writing, once for every benchmark: print the run's section, write its record to
docs/results/ and render every page from the records (``bench.render``)."""

from __future__ import annotations

from typing import Any

from bench.blocks import section
from bench.render import render_all
from bench.results import make_record, write_result


def publish(name: str, results: dict[str, Any], no_write: bool = False) -> None:
    """Print ``results`` as its docs section; unless ``no_write``, record them and re-render."""
    print(section(make_record(name, results)))
    if no_write:
        return
    path = write_result(name, results)
    changed = render_all()
    print(f"wrote {path}; rendered {', '.join(map(str, changed)) or 'no page changed'}")
