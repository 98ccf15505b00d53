"""The SQLite prediction log in a data folder that fills up, on a real server: predictions keep
being answered, the failed writes are counted as dropped, and what was written stays readable.
Two ways to fill it: a tiny tmpfs mounted on the folder (a real full disk, ENOSPC; root only)
and a file-size limit on the server process (``ulimit -f``: the same failed write, EFBIG,
unprivileged). The read-only, locked and unopenable cases are in tests/dataplane."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.dataplane import prediction_store as store
from tests.support.models import make_model_repo
from tests.support.servers import server_process, service_command, wait_until

BATCH = 16
BODY = {"inputs": [{"name": "images", "shape": [BATCH, 32, 32, 3], "datatype": "UINT8",
                    "data": np.zeros(BATCH * 3072, dtype=np.uint8).tolist()}]}  # fmt: skip
LIMIT_KB = 2048  # the folder's (or each file's) room: a few hundred captured images


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def full_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(the data folder, a shell prefix for the server): room for LIMIT_KB, then full."""
    folder = tmp_path / "data"
    folder.mkdir()
    if request.param == "file-size-limit":
        yield folder, f"ulimit -f {LIMIT_KB} &&"  # 1 KiB blocks: a larger write fails (EFBIG)
        return
    mount = ["mount", "-t", "tmpfs", "-o", f"size={LIMIT_KB}k", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root only): {done.stderr.strip()}")
    try:
        yield folder, ""
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"  # summed over labels
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_a_full_data_folder_drops_and_counts_and_keeps_what_was_written(
    full_folder: tuple[Path, str], tmp_path: Path
) -> None:
    folder, prefix = full_folder
    repo = make_model_repo(tmp_path, lecture=False)
    env = {**os.environ, "DATA_DIR": str(folder), "CAPTURE_IMAGES": "1",
           "PREDICTION_LOG_RETRY_S": "0", "PROVIDERS": "CPUExecutionProvider"}  # fmt: skip
    command = ["sh", "-c", f'{prefix} exec "$0" "$@"', *service_command("--model-repository",
               str(repo), "--grpc-port", "-1")]  # fmt: skip
    with server_process(command, env) as server, httpx.Client(timeout=30) as http:
        server.wait_ready()
        sent = 0
        while metric(server.url, "prediction_log_dropped_total") == 0:
            assert sent < 400 * BATCH, "the folder never filled up"
            answer = http.post(f"{server.url}/v2/models/tiny/infer", json=BODY)
            assert answer.status_code == 200, answer.text
            sent += BATCH

        def settled() -> bool:
            counted = metric(server.url, "prediction_log_written_total")
            return counted + metric(server.url, "prediction_log_dropped_total") == sent

        wait_until(settled, 30, "every record written or counted as dropped")
        written = metric(server.url, "prediction_log_written_total")
        dropped = metric(server.url, 'prediction_log_dropped_total{reason="write_failed"}')
    assert written > 0 and dropped > 0
    engine = store.connect(f"sqlite:///file:{folder / 'predictions.sqlite3'}?mode=ro&uri=true")
    try:
        assert len(store.read_all(engine)) == written  # what was written is all there, readable
    finally:
        engine.dispose()
