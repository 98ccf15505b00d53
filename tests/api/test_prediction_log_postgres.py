"""The prediction log, feedback and monitor on a real PostgreSQL server
(``tests/support/postgres.py`` starts one on loopback): two service replicas writing to one
database, feedback through either labelling the other's records, one monitor answer counting
both, and the database going away mid-load and coming back (every
prediction still answered, every failed write counted, nothing committed before lost)."""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from service.core.logs import MAX_ID_LENGTH
from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog
from tests.support.apps import ADMIN, ADMIN_TOKEN
from tests.support.feedback_log import assert_provenance_column_is_added, label_ids
from tests.support.models import make_model_repo
from tests.support.postgres import Postgres, postgres  # noqa: F401 (a fixture)
from tests.support.servers import ServerProcess, server_process, service_command, wait_until

IMAGE = np.arange(3072, dtype=np.uint8).reshape(32, 32, 3)
V2_BODY = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                       "data": IMAGE.ravel().tolist()}]}  # fmt: skip


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


def monitor_counts(server: ServerProcess, ids: set[str], seen: list[object]) -> bool:
    """Whether ``server``'s monitor answer counts ``ids`` and two labels (the answer: ``seen``)."""
    answer = httpx.get(f"{server.url}/v1/models/tiny/monitor", timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    seen[:] = [body]
    return bool(body["predictions"] == len(ids) and body["labelled"]["n"] == 2)


def check_one_monitor_counts_both(servers: list[ServerProcess], ids: set[str]) -> None:
    """One monitor answer counts every replica's records and labels, whichever replica gives it
    (it aggregates the shared table; its answers are shared for up to 1 s, so it is asked
    until it has caught up)."""
    for server in servers:
        seen: list[object] = []
        counted = functools.partial(monitor_counts, server, ids, seen)
        wait_until(counted, 10, functools.partial(str, seen), 0.2)  # the last answer seen


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
        check_one_monitor_counts_both([first, second], set(sent))


@dataclass
class Load:
    """``clients`` threads classifying through one server until stopped; every answer kept."""

    server: ServerProcess
    clients: int = 4
    answers: list[tuple[str, int]] = field(default_factory=list)  # (request id, status)
    phase: str = "before"  # the prefix of the ids sent now
    before: set[str] = field(default_factory=set)  # the ids in the database when it stopped
    _stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, number: int) -> None:
        with httpx.Client(timeout=30) as http:
            sent = 0
            while not self._stop.is_set():
                request_id = f"{self.phase}-{number}-{sent}"
                sent += 1
                try:
                    status = predict(http, self.server, request_id).status_code
                except httpx.TransportError:
                    status = -1
                self.answers.append((request_id, status))

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def more(self, count: int, timeout_s: float = 30) -> None:
        """Wait until ``count`` more answers came back."""
        target = len(self.answers) + count
        wait_until(lambda: len(self.answers) >= target, timeout_s, f"{count} more answers")


def outage_under_load(postgres: Postgres, url: str, server: ServerProcess) -> Load:  # noqa: F811
    """Load, then PostgreSQL stopped until the writer has failed, then started again, load
    throughout; ``before`` is what the database held when it was stopped."""
    with Load(server).running() as load:
        load.more(40)
        wait_until(lambda: len(logged_ids(url)) >= 20, 15, "records written before the outage")
        load.before = set(logged_ids(url))
        postgres.stop("fast")
        try:
            load.phase = "outage"
            load.more(40)
            errors = "prediction_log_write_errors_total"
            failed = lambda: metrics(server).get(errors, 0) > 0  # noqa: E731
            wait_until(failed, 15, "the writer to notice the database is gone")
            load.more(40)
        finally:
            postgres.start()
        load.phase = "after"
        load.more(40)
    return load


def metrics(server: ServerProcess) -> dict[str, float]:
    """The log's ``/metrics`` samples by name and labels (``..._dropped_total{reason="x"}``)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(prediction_log_\w+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def dropped(sample: dict[str, float]) -> float:
    return sum(v for k, v in sample.items() if k.startswith("prediction_log_dropped_total"))


@pytest.mark.parametrize("retry_s", ["30", "0"])
def test_postgres_going_away_mid_load_and_coming_back(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    retry_s: str,
) -> None:
    """Stopped (``pg_ctl stop -m fast``) under load and started again. With a retry window the
    failed batches wait and land when it is back (nothing dropped); with none they are dropped
    and counted. Either way every prediction is answered 200, the records committed before the
    outage are all still there, and the ones answered after it land (the writer reconnects)."""
    url = postgres.new_database()
    repo = make_model_repo(tmp_path, lecture=False)
    env = {"PREDICTION_LOG_RETRY_S": retry_s}
    with replicas(repo, url, 1, **env) as (server,):
        load = outage_under_load(postgres, url, server)
        answered = {request_id for request_id, _ in load.answers}
        assert [a for a in load.answers if a[1] != 200] == []  # every prediction answered

        def settled() -> bool:
            sample = metrics(server)
            return sample.get("prediction_log_written_total", 0) + dropped(sample) == len(answered)

        wait_until(settled, 60, lambda: f"written + dropped = {len(answered)}: {metrics(server)}")
        sample, ids = metrics(server), logged_ids(url)
    assert len(ids) == len(set(ids)) == sample["prediction_log_written_total"]  # each once
    assert load.before <= set(ids)  # nothing committed before the outage is lost
    assert {i for i in answered if i.startswith("after-")} <= set(ids)  # it reconnected
    if retry_s == "0":
        assert sample['prediction_log_dropped_total{reason="write_failed"}'] > 0
    else:  # the outage was shorter than the retry window: every record landed
        assert dropped(sample) == 0 and set(ids) == answered


def test_ids_postgres_would_refuse_do_not_take_a_batch_down(
    postgres: Postgres,  # noqa: F811
) -> None:
    """A v2 or gRPC ``id`` may be longer than the column or hold NUL, which PostgreSQL refuses:
    the writer cleans it, so the batch it shares with other clients' records is written."""
    url = postgres.new_database()
    log = PredictionLog(url, CollectorRegistry(), 100, 0.0, (3600.0, 1000))
    outputs = {"probabilities": np.array([[0.2, 0.8]], dtype=np.float32)}
    for request_id in ("x" * 300, "nul\x00id", "plain"):
        log.record(request_id, "tiny", 1, IMAGE[None], outputs)
    log.close(10.0)
    assert float(log.written._value.get()) == 3
    assert sorted(logged_ids(url)) == sorted(["x" * MAX_ID_LENGTH, "nulid", "plain"])


def test_pruning_on_postgres_keeps_labels_and_leaves_its_size_to_the_database(
    postgres: Postgres,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retention's statements (oldest first by row or by time, in short transactions) as
    PostgreSQL runs them; no bytes bound there: its size after a delete waits for its vacuum."""
    monkeypatch.setattr(store, "DELETE_ROWS", 2)
    engine = store.connect(postgres.new_database())
    now = time.time()
    ages = [7200, 5000, 10, 9, 8, 7, 6]
    rows = [(f"r{i}", 0, "tiny", 1, now - age, 1, 0.5, None) for i, age in enumerate(ages)]
    store.insert(engine, rows)
    label_ids(engine, [("r2", 0, 3)])
    assert store.prune(engine, 3600, 2) == 5  # 2 by age, then the 3 oldest unlabelled
    assert sorted(logged_ids(engine.url.render_as_string(hide_password=False))) == ["r2", "r6"]
    assert store.stored_bytes(engine) is None and store.prune_to_bytes(engine, 1) == 0
    engine.dispose()


def test_a_postgres_log_made_before_provenance_gets_its_column_on_open(
    postgres: Postgres,  # noqa: F811
) -> None:
    assert_provenance_column_is_added(postgres.new_database())
