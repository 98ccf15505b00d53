"""Figures in README.md and docs/*.md are rendered from docs/results/*.json, never retyped: every
rendered block and inline figure must match what ``python -m bench render`` draws from the
records, so two pages can't disagree and a new run can't leave a page behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.blocks import BLOCKS
from bench.figures import FIGURES
from bench.render import BLOCK, FIGURE, Records, pages, render_all, render_text
from bench.results import RESULTS_DIR, ROOT


def test_every_rendered_block_and_figure_matches_its_record() -> None:
    stale = render_all(check=True)
    assert not stale, f"stale against docs/results: {stale}; run python -m bench render"


def test_every_record_says_which_command_made_it_and_when() -> None:
    records = sorted(RESULTS_DIR.glob("*.json"))
    assert records
    for path in records:
        record = json.loads(path.read_text())
        assert record["name"] == path.stem
        assert record["command"].startswith(("python ", "make "))
        assert record["commit"] and record["time"]
        assert isinstance(record["results"], dict)


def test_every_renderer_has_a_record_and_a_page_that_shows_it() -> None:
    text = "".join(page.read_text() for page in pages())
    shown = {m.group(1) for m in BLOCK.finditer(text)} | {m.group(1) for m in FIGURE.finditer(text)}
    records = Records()
    for name, (source, _) in {**BLOCKS, **FIGURES}.items():
        assert records[source]["name"] == source
        assert name in shown, f"{name} is rendered on no page"


def test_a_changed_record_makes_its_pages_stale(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(ROOT / "docs" / "serving.md", tmp_path / "docs" / "serving.md")
    results = tmp_path / "results"
    shutil.copytree(RESULTS_DIR, results)
    assert render_all(check=True, root=tmp_path, results=results) == []
    peers = json.loads((results / "peers.json").read_text())
    peers["results"]["modes"]["pinned"]["workloads"][1]["rps_ratio"] = 9.99
    (results / "peers.json").write_text(json.dumps(peers))
    assert render_all(check=True, root=tmp_path, results=results) == [Path("docs/serving.md")]
    assert render_all(root=tmp_path, results=results) == [Path("docs/serving.md")]
    assert "9.99x" in (tmp_path / "docs" / "serving.md").read_text()


def test_a_block_without_a_renderer_is_an_error() -> None:
    text = "<!-- no-such-table:begin -->\n| x |\n<!-- no-such-table:end -->\n"
    try:
        render_text(text, Records(), "page.md")
    except LookupError as exc:
        assert "no-such-table" in str(exc)
    else:
        raise AssertionError("an unknown block was left as it was")


def test_bench_render_check_is_the_command_line_of_this_test() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "render", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
