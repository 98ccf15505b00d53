"""Readiness after warm-up: a version published while the server runs is READY (and served) only
once its warm-up runs (``WARM_UP_BATCH_SIZES``) have finished; meanwhile the previous version
answers every request."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from service.core.card import CARD_FILE, MODEL_FILE, read_card
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.settings import Settings
from tests.support.interop import MODEL, lecture_repository
from tests.support.servers import running_server

WARM_UP = [1024] * 4  # the shipped model needs a good fraction of a second for these


def publish_copy(repo: Path, version: int) -> None:
    """Version 1's files as ``version``, renamed into place in one step (as publishing does)."""
    tmp = repo / MODEL / f".tmp-{version}"
    shutil.copytree(repo / MODEL / "1", tmp)
    card = json.loads((tmp / CARD_FILE).read_text())
    card["version"] = version
    (tmp / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    os.rename(tmp, repo / MODEL / str(version))


def warm_up_seconds(repo: Path) -> float:
    """How long these warm-up runs take here, in process."""
    folder = repo / MODEL / "1"
    options = RuntimeOptions(providers=("CPUExecutionProvider",), warm_up_batch_sizes=(1024,))
    runtime = ModelRuntime(read_card(folder), (folder / MODEL_FILE).read_bytes(), options)
    runtime.warm_up()  # the first run pays for initialisation: time the others
    runtime.options = replace(options, warm_up_batch_sizes=tuple(WARM_UP))
    start = time.perf_counter()
    runtime.warm_up()
    runtime.close()
    return time.perf_counter() - start


def test_a_reloaded_version_is_ready_and_served_only_after_its_warm_up(tmp_path: Path) -> None:
    repo = lecture_repository(tmp_path)
    for newer in (d for d in (repo / MODEL).iterdir() if d.name != "1"):
        shutil.rmtree(newer)  # start from version 1 alone: the test publishes 2
    expected_s = warm_up_seconds(repo)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0.05,
        warm_up_batch_sizes=WARM_UP,
        version_policy="latest",
    )
    image = np.zeros((1, 32, 32, 3), np.uint8)
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                        "data": image.ravel().tolist()}]}  # fmt: skip
    with running_server(settings, grpc=False) as server, httpx.Client(base_url=server.url) as http:
        assert http.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
        published = time.monotonic()
        publish_copy(repo, 2)
        served: list[str] = []
        while http.get(f"/v2/models/{MODEL}/versions/2/ready").status_code != 200:
            assert time.monotonic() - published < 60, "version 2 never became ready"
            answer = http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert answer.status_code == 200, answer.text
            served.append(answer.json()["model_version"])
        ready_after = time.monotonic() - published
        after = http.post(f"/v2/models/{MODEL}/infer", json=body).json()["model_version"]
    # The old version answered throughout (the last answer may come after the switch).
    assert len(served) > 1 and set(served[:-1]) == {"1"}
    assert after == "2"
    assert ready_after >= 0.8 * expected_s, (ready_after, expected_s)
