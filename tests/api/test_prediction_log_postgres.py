"""The prediction log and feedback on a real PostgreSQL server (``tests/support/postgres.py``
starts one on loopback): two service replicas writing to one database, feedback through either
labelling the other's records, and the database going away mid-load and coming back (every
prediction still answered, every failed write counted, nothing committed before lost)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from service.dataplane import prediction_store as store
from tests.support.apps import ADMIN, ADMIN_TOKEN
from tests.support.models import make_model_repo
from tests.support.postgres import Postgres, postgres  # noqa: F401 (a fixture)
from tests.support.servers import ServerProcess, server_process, service_command, wait_until

IMAGE = np.arange(3072, dtype=np.uint8).reshape(32, 32, 3)
V2_BODY = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                       "data": IMAGE.ravel().tolist()}]}  # fmt: skip
# Set True once GET /v1/models/{name}/monitor is merged (issue 27, helper "monitor"): then one
# monitor answer, from either replica, must count both replicas' predictions and labels.
MONITOR_ENDPOINT = False


def logged_ids(url: str) -> list[str]:
    """The request ids of every record in the database at ``url`` (read through SQLAlchemy)."""
    engine = store.connect(url)  # the tables too, if no replica has written yet
    try:
        with engine.connect() as connection:
            query = sa.select(store.PREDICTIONS.c.request_id)
            return [row[0] for row in connection.execute(query)]
    finally:
        engine.dispose()


def labels(url: str) -> dict[str, int | None]:
    engine = store.connect(url)  # the tables too, if no replica has written yet
    try:
        return {r["request_id"]: r["label"] for r in store.read_all(engine)}
    finally:
        engine.dispose()


@contextmanager
def replicas(repo: Path, url: str, count: int, **env: str) -> Iterator[list[ServerProcess]]:
    """``count`` ``python -m service`` processes logging to ``url``, ready."""
    environment = {**os.environ, "PREDICTION_LOG_URL": url, "PROVIDERS": "CPUExecutionProvider",
                   "POLL_INTERVAL_S": "0", "ADMIN_TOKEN": ADMIN_TOKEN, **env}  # fmt: skip
    command = service_command("--model-repository", str(repo), "--grpc-port", "-1")
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(command, environment)) for _ in range(count)]
        for server in servers:
            server.wait_ready()
        yield servers


def predict(http: httpx.Client, server: ServerProcess, request_id: str) -> httpx.Response:
    """One image classified by ``server`` under ``request_id`` (its X-Request-ID)."""
    url, headers = f"{server.url}/v2/models/tiny/infer", {"X-Request-ID": request_id}
    return http.post(url, json=V2_BODY, headers=headers)


def check_one_monitor_counts_both(servers: list[ServerProcess], url: str, ids: set[str]) -> None:
    """One answer counts every replica's records: today in the database itself; with
    MONITOR_ENDPOINT, also in each replica's monitor answer."""
    assert set(logged_ids(url)) >= ids
    if not MONITOR_ENDPOINT:
        return
    for server in servers:  # each replica's answer counts both
        answer = httpx.get(f"{server.url}/v1/models/tiny/monitor", timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["predictions"] == len(ids), body
        assert body["labelled"]["n"] == 2, body


def test_two_replicas_share_one_postgres_log_and_feedback_crosses_them(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = postgres.new_database()
    repo = make_model_repo(tmp_path, lecture=False)
    with replicas(repo, url, 2) as (first, second):
        sent: dict[str, ServerProcess] = {}
        with httpx.Client(timeout=30) as http:
            for i in range(20):
                server = (first, second)[i % 2]
                request_id = f"replica{i % 2}-{i}"
                answer = predict(http, server, request_id)
                assert answer.status_code == 200, answer.text
                sent[request_id] = server
        wait_until(lambda: set(logged_ids(url)) >= set(sent), 15, "both replicas' records")
        assert sorted(logged_ids(url)) == sorted(sent)  # each once, none missing
        # feedback through one replica labels a record the other one wrote, both ways
        for via, written_by in ((first, "replica1-1"), (second, "replica0-0")):
            body = {"id": written_by, "label": "cat"}
            answer = httpx.post(f"{via.url}/v1/feedback", json=body, headers=ADMIN, timeout=30)
            assert answer.status_code == 200 and answer.json() == {"labelled": 1}, answer.text
        unknown = {"id": "never-seen", "label": "cat"}
        answer = httpx.post(f"{first.url}/v1/feedback", json=unknown, headers=ADMIN, timeout=30)
        assert answer.status_code == 404, answer.text
        found = labels(url)
        assert found["replica1-1"] == found["replica0-0"] == 3  # cat
        assert sum(label is not None for label in found.values()) == 2
        check_one_monitor_counts_both([first, second], url, set(sent))
