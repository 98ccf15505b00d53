"""``python -m bench decode`` times the decoding steps of real v2 bodies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_decode_reports_every_step_for_every_body() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "decode", "--repeats", "5", "--no-write"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("\n{\n") :])  # after the section
    assert set(report) == {"FP32 JSON", "UINT8 JSON", "UINT8 binary"}
    assert (
        report["UINT8 binary"]["bytes"]
        < report["UINT8 JSON"]["bytes"]
        < (report["FP32 JSON"]["bytes"])
    )
    json_steps = {
        "decode_infer_request", "simdjson_parse", "loads_infer_request", "array_from_json",
        "orjson_loads",
    }  # fmt: skip
    for name, row in report.items():
        steps = json_steps if "JSON" in name else {"decode_infer_request"}
        assert set(row) == steps | {"bytes"}
        assert all(value > 0 for value in row.values())
