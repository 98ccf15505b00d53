"""``bench.placement``: a pinned server and every process and thread it starts stay on the server's
core (read back from /proc, as the peers benchmark records it), and a shared one does not."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bench.placement import SHARED, group_affinity, pinned, placements, taskset
from bench.server import Group

CORES = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CORES) < 2, reason="pinning needs two cores")

# A stand-in server: forks a child, starts threads in both (as uvicorn workers and onnxruntime's
# pools do), says so in a file and waits to be stopped.
SERVER = """
import os, sys, threading, time
os.fork()
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
open(sys.argv[1] + f".{os.getpid()}", "w").close()
time.sleep(60)
"""


def _started(argv: list[str], tmp_path: Path) -> Group:
    group = Group([*argv, str(tmp_path / "ready")], {}, tmp_path / "log")
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready.*"))) < 2:
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.05)
    return group


def test_taskset_prefixes_only_a_pinned_command() -> None:
    assert taskset(None, ["python"]) == ["python"]
    assert taskset("0", ["python", "-V"]) == ["taskset", "-c", "0", "python", "-V"]
    assert SHARED.server(["x"]) == ["x"] and not SHARED.pinned


@needs_two
def test_a_pinned_server_and_all_its_processes_and_threads_stay_on_its_core(
    tmp_path: Path,
) -> None:
    place = pinned()
    assert (place.server_cpus, place.client_cpus) == (str(CORES[0]), str(CORES[1]))
    group = _started(place.server([sys.executable, "-c", SERVER]), tmp_path)
    try:
        seen = group_affinity(group.process.pid)
    finally:
        group.stop()
    assert seen == {"processes": 2, "threads": 8, "cpus": [str(CORES[0])]}


@needs_two
def test_a_shared_server_may_run_on_every_core(tmp_path: Path) -> None:
    group = _started([sys.executable, "-c", SERVER], tmp_path)
    try:
        seen = group_affinity(group.process.pid)
    finally:
        group.stop()
    assert seen["processes"] == 2
    assert seen["cpus"] != [str(CORES[0])]


def test_placements_are_taken_in_the_order_named_and_unknown_ones_refused() -> None:
    if len(CORES) >= 2:
        assert [p.mode for p in placements(["pinned", "shared"], None, None)] == [
            "pinned",
            "shared",
        ]
    with pytest.raises(SystemExit, match="unknown mode"):
        placements(["shared", "isolated"], None, None)
    with pytest.raises(SystemExit, match="two distinct cores"):
        pinned(CORES[0], CORES[0])
