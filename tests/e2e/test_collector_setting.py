"""GC_GEN0_THRESHOLD: where the server starts, the collector's generation-0 threshold is raised and
start-up's objects frozen out of its scans; 0 keeps Python's defaults. Run in a subprocess: the
collector's settings belong to the whole interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json
from service.__main__ import tune_collector
from service.settings import Settings
before = gc.get_threshold()
tune_collector(Settings({changes}))
after, frozen = gc.get_threshold(), gc.get_freeze_count()
print(json.dumps({{"before": before, "after": after, "frozen": frozen}}))
"""


def probe(changes: str) -> dict[str, list[int] | int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(changes=changes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, list[int] | int] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("threshold", [50_000, 1234])
def test_the_threshold_is_raised_and_start_up_frozen(threshold: int) -> None:
    result = probe(f"gc_gen0_threshold={threshold}")
    before, after = result["before"], result["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after[0] == threshold and after[1:] == before[1:]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000  # the imported modules


def test_zero_keeps_pythons_defaults() -> None:
    result = probe("gc_gen0_threshold=0")
    assert result["after"] == result["before"] and result["frozen"] == 0
