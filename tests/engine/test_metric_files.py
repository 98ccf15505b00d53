"""A dead worker's counter and histogram files are folded into one archive per type: the sums
the multiprocess collector reads stay exactly as they were, and the files go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prometheus_client import multiprocess

from service.core.processes import alive
from service.engine.metric_files import fold_dead, journal, reading, staged_archive

WORKER = """
from prometheus_client import Counter, Histogram
jobs = Counter("jobs", "Jobs done.", ["kind"])
seconds = Histogram("job_seconds", "Job time.", buckets=(1, 2))
for n in range({n}):
    jobs.labels("even" if n % 2 == 0 else "odd").inc(1.5)
    seconds.observe(n % 3)
"""


def worker(folder: Path, n: int) -> int:
    """Run a worker that counts ``n`` jobs into ``folder`` and exits; its pid (dead, reaped)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    child = subprocess.Popen([sys.executable, "-c", WORKER.format(n=n)], env=env)
    assert child.wait(timeout=60) == 0
    return child.pid


def totals(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the multiprocess collector reads, by name and labels."""
    collector = multiprocess.MultiProcessCollector(None, str(folder))  # type: ignore[no-untyped-call]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()  # type: ignore[no-untyped-call]
        for s in family.samples
    }


def db_files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.db")}


def fold_stopped_after_its_commit(
    folder: Path,
) -> tuple[list[str], dict[tuple[str, tuple[tuple[str, str], ...]], float], Path]:
    """Two dead workers' files folded into the archives, then put back beside the fold's
    journal: a fold whose process died after its commit, before its deletes. The files' names,
    the totals before the fold, and the folder holding a copy of the files."""
    dead = [worker(folder, n) for n in (3, 5)]
    names = [f"{kind}_{pid}.db" for pid in dead for kind in ("counter", "histogram")]
    before = totals(folder)
    kept = folder / "kept"
    kept.mkdir()
    for name in names:
        shutil.copy(folder / name, kept / name)
    fold_dead(folder, alive)
    for name in names:
        shutil.copy(kept / name, folder / name)
    for kind in ("counter", "histogram"):
        journal(folder, kind).write_text(json.dumps([n for n in names if n.startswith(kind)]))
    return names, before, kept


def test_dead_workers_files_fold_into_archives_with_the_sums_unchanged(tmp_path: Path) -> None:
    pids = [worker(tmp_path, n) for n in (3, 5, 8)]
    assert len(db_files(tmp_path)) == 6  # a counter and a histogram file each
    before = totals(tmp_path)
    assert before[("jobs_total", (("kind", "even"),))] == 1.5 * (2 + 3 + 4)
    assert before[("job_seconds_count", ())] == 16

    assert fold_dead(tmp_path, alive) == 6
    assert db_files(tmp_path) == {"counter_archive.db", "histogram_archive.db"}
    assert totals(tmp_path) == before
    assert fold_dead(tmp_path, alive) == 0  # nothing more to fold

    worker(tmp_path, 4)  # one more restart: its files join the archives
    assert fold_dead(tmp_path, alive) == 2
    assert db_files(tmp_path) == {"counter_archive.db", "histogram_archive.db"}
    after = totals(tmp_path)
    assert after[("jobs_total", (("kind", "odd"),))] == 1.5 * (1 + 2 + 4 + 2)
    assert after[("job_seconds_count", ())] == 20
    assert all(not (tmp_path / f"counter_{pid}.db").exists() for pid in pids)


def test_a_live_workers_files_are_left_alone(tmp_path: Path) -> None:
    dead = worker(tmp_path, 2)
    own = tmp_path / f"counter_{os.getpid()}.db"  # this process: alive, as a serving worker is
    shutil.copy(tmp_path / f"counter_{dead}.db", own)
    assert fold_dead(tmp_path, alive) == 2
    assert own.exists() and (tmp_path / "counter_archive.db").exists()
    assert totals(tmp_path)[("jobs_total", (("kind", "even"),))] == 2 * 1.5


def test_a_fold_stopped_half_way_is_finished_or_undone_never_counted_twice(
    tmp_path: Path,
) -> None:
    """A worker killed while folding: after the new archive was swapped in (the next fold
    deletes the files it named) or before (the next fold drops the staged archive and folds
    the files again)."""
    # stopped after the swap: the archives hold the files, which are still there
    names, before, kept = fold_stopped_after_its_commit(tmp_path)
    assert fold_dead(tmp_path, alive) == 0  # finishing it was all there was to do
    assert db_files(tmp_path) == {"counter_archive.db", "histogram_archive.db"}
    assert totals(tmp_path) == before

    # stopped before the swap: a staged archive (here a copy of the archive) and the journal
    archives = tmp_path / "archives"
    archives.mkdir()
    for kind in ("counter", "histogram"):
        shutil.move(tmp_path / f"{kind}_archive.db", archives / f"{kind}_archive.db")
        shutil.copy(archives / f"{kind}_archive.db", staged_archive(tmp_path, kind))
        journal(tmp_path, kind).write_text(json.dumps([n for n in names if n.startswith(kind)]))
    for name in names:
        shutil.copy(kept / name, tmp_path / name)
    assert fold_dead(tmp_path, alive) == 4  # undone, then folded again from the files
    assert db_files(tmp_path) == {"counter_archive.db", "histogram_archive.db"}
    assert totals(tmp_path) == before
    assert not any(p.suffix in (".new", ".journal") for p in tmp_path.iterdir())


def test_a_scrape_finishes_a_fold_whose_process_died_after_its_commit(tmp_path: Path) -> None:
    """A scrape that checked for dead files just before a fold committed, the folding worker
    then killed before its deletes (its lock dies with it): the scrape's read would find the
    archive and the files it already holds, and count them twice."""
    _, before, _ = fold_stopped_after_its_commit(tmp_path)
    with reading(tmp_path, alive):
        read = totals(tmp_path)
    assert read == before
    assert db_files(tmp_path) == {"counter_archive.db", "histogram_archive.db"}
