"""The prediction log and feedback on a real server (uvicorn and gRPC on loopback, the SQLite
default): every wire's answers are recorded under the id the client sees, images only when
captured, feedback's 404/422/idempotence/admin rule, and SIGTERM flushing the queue."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.core.captured_images import unpack
from service.dataplane import prediction_store as store
from tests.support.apps import ADMIN_TOKEN, make_settings
from tests.support.models import make_model_repo
from tests.support.servers import running_server, server_process, service_command, wait_until

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
IMAGE = np.arange(3072, dtype=np.uint8).reshape(32, 32, 3)
V2_BODY = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                       "data": IMAGE.ravel().tolist()}]}  # fmt: skip


def rows(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "predictions.sqlite3"
    if not path.exists():
        return []
    engine = store.connect(f"sqlite:///{path}")
    try:
        return store.read_all(engine)
    finally:
        engine.dispose()


def wait_for_rows(data_dir: Path, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(rows(data_dir)) >= count, 10, f"{count} records")
    return rows(data_dir)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own DATA_DIR (servers in this process and children alike)."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def served(tmp_path: Path, data_dir: Path) -> Iterator[tuple[httpx.Client, str]]:
    """A server with the default log settings: (a REST client, the gRPC address)."""
    repo = make_model_repo(tmp_path, lecture=False)
    with (
        running_server(make_settings(repo, data_dir=data_dir)) as running,
        httpx.Client(base_url=f"http://{running.address}", timeout=30) as http,
    ):
        yield http, f"127.0.0.1:{running.grpc_port}"


def grpc_infer(address: str, request_id: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny", id=request_id)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(IMAGE.tobytes())
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(request, timeout=10).id == request_id


def test_every_wire_is_recorded_under_the_id_the_client_sees(
    served: tuple[httpx.Client, str], data_dir: Path
) -> None:
    http, grpc_address = served
    v2 = http.post("/v2/models/tiny/infer", json=V2_BODY)
    assert v2.status_code == 200, v2.text
    given_id = http.post("/v2/models/tiny/infer", json={**V2_BODY, "id": "client-id-7"})
    assert given_id.json()["id"] == "client-id-7"
    v1 = http.post("/v1/models/tiny:predict", json={"instances": [IMAGE.tolist()] * 2})
    assert v1.status_code == 200, v1.text
    grpc_infer(grpc_address, "grpc-id-1")
    found = wait_for_rows(data_dir, 5)
    ids = [(r["request_id"], r["item"]) for r in found]
    assert (v2.headers["x-request-id"], 0) in ids
    assert ("client-id-7", 0) in ids and ("grpc-id-1", 0) in ids
    assert (v1.headers["x-request-id"], 1) in ids
    top = v1.json()["predictions"][0][0]
    record = next(r for r in found if r["request_id"] == v1.headers["x-request-id"])
    assert (record["model"], record["top1"]) == ("tiny", top["index"])
    assert record["top1_probability"] == pytest.approx(top["probability"], abs=1e-6)
    assert all(r["image"] is None for r in found)  # capture is off by default


def test_capture_stores_the_image_bytes(tmp_path: Path, data_dir: Path) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    with running_server(make_settings(repo, capture_images=1.0), grpc=False) as running:
        url = f"http://{running.address}"
        assert httpx.post(f"{url}/v2/models/tiny/infer", json=V2_BODY).status_code == 200
        (record,) = wait_for_rows(data_dir, 1)
    assert unpack(record["image"], IMAGE.nbytes) == IMAGE.tobytes()  # stored compressed


def test_feedback_labels_records_404s_unknown_ids_and_422s_bad_labels(
    served: tuple[httpx.Client, str], data_dir: Path
) -> None:
    http, _ = served
    answer = http.post("/v1/models/tiny:predict", json={"instances": [IMAGE.tolist()] * 2})
    request_id = answer.headers["x-request-id"]
    post = http.post  # the server's client is loopback, but ADMIN_LOOPBACK is off: token needed
    assert post("/v1/feedback", json={"id": request_id, "label": "cat"}).status_code == 401
    ok = post("/v1/feedback", json={"id": request_id, "label": "cat"}, headers=AUTH)
    assert ok.status_code == 200 and ok.json() == {"labelled": 1}, ok.text
    again = post("/v1/feedback", json={"id": request_id, "label": 3}, headers=AUTH)  # cat is 3
    assert again.status_code == 200
    both = [{"id": request_id, "label": "dog"}, {"id": request_id, "label": 0, "item": 1}]
    assert post("/v1/feedback", json=both, headers=AUTH).status_code == 200  # the last one wins
    labels = {r["item"]: r["label"] for r in rows(data_dir) if r["request_id"] == request_id}
    assert labels == {0: 5, 1: 0}
    unknown = post("/v1/feedback", json={"id": "never-seen", "label": 1}, headers=AUTH)
    assert unknown.status_code == 404
    for label in ("kitten", 10, -1, True, 1.5, None):
        bad = post("/v1/feedback", json={"id": request_id, "label": label}, headers=AUTH)
        assert bad.status_code == 422, (label, bad.text)
    mixed = [{"id": request_id, "label": "bird"}, {"id": "never-seen", "label": 1}]
    assert post("/v1/feedback", json=mixed, headers=AUTH).status_code == 404
    assert {r["label"] for r in rows(data_dir) if r["item"] == 0} == {5}  # all or nothing


def test_feedback_open_admits_anyone(tmp_path: Path, data_dir: Path) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    settings_ = make_settings(repo, feedback_open=True, admin_token=None)
    with running_server(settings_, grpc=False) as running:
        url = f"http://{running.address}"
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=V2_BODY)
        body = {"id": answer.headers["x-request-id"], "label": "ship"}
        assert httpx.post(f"{url}/v1/feedback", json=body).status_code == 200
        # ...but not a visitor's browser on another site's behalf, whose id it cannot guess
        # from its own either (a process prefix and a counter made it one's own minus one).
        page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        content = json.dumps(body).encode()  # a simple request: no Content-Type, no preflight
        cross_site = httpx.post(f"{url}/v1/feedback", content=content, headers=page)
        assert cross_site.status_code == 403, cross_site.text
        ids = [httpx.post(f"{url}/v2/models/tiny/infer", json=V2_BODY) for _ in range(3)]
        first, *rest = (int(r.headers["x-request-id"], 16) for r in ids)
        assert all(abs(other - first) > 2**32 for other in rest)


def test_the_log_records_whether_an_admin_or_an_open_labeller_gave_each_label(
    tmp_path: Path, data_dir: Path
) -> None:
    """With FEEDBACK_OPEN one client with nothing but infer and feedback calls displaced every
    honest label in the retrain's feedback: nothing told its labels from an admin's; and one who
    knew an admin-labelled record's id relabelled it, an open label in its place."""
    repo = make_model_repo(tmp_path, lecture=False)
    with running_server(make_settings(repo, feedback_open=True), grpc=False) as running:
        url = f"http://{running.address}"
        ids = [httpx.post(f"{url}/v2/models/tiny/infer", json=V2_BODY) for _ in range(3)]
        admin, anyone, wrong = (r.headers["x-request-id"] for r in ids)
        given = httpx.post(f"{url}/v1/feedback", json={"id": admin, "label": 1}, headers=AUTH)
        assert given.status_code == 200, given.text
        assert httpx.post(f"{url}/v1/feedback", json={"id": anyone, "label": 2}).status_code == 200
        bad_token = {"Authorization": "Bearer not-the-token"}  # refused, not taken as open
        body = {"id": wrong, "label": 0}
        assert httpx.post(f"{url}/v1/feedback", json=body, headers=bad_token).status_code == 403
        # an admin's relabel makes the record the admin's, an open one makes it open again
        relabel = httpx.post(f"{url}/v1/feedback", json={"id": anyone, "label": 2}, headers=AUTH)
        assert relabel.status_code == 200
        # the refused id's record may still be queued: nothing waited for it to be written
        by = {r["request_id"]: (r["label"], r["labelled_by"]) for r in wait_for_rows(data_dir, 3)}
        assert by == {admin: (1, "admin"), anyone: (2, "admin"), wrong: (None, None)}
        # an open label never replaces an admin's: another is a 409 for the whole body, the
        # same one a 200 that leaves it the admin's (the last label won, and became open)
        both = [{"id": wrong, "label": 0}, {"id": admin, "label": 3}]
        conflict = httpx.post(f"{url}/v1/feedback", json=both)
        assert conflict.status_code == 409 and "admin" in conflict.json()["error"]
        assert httpx.post(f"{url}/v1/feedback", json={"id": admin, "label": 1}).status_code == 200
        assert {r["request_id"]: (r["label"], r["labelled_by"]) for r in rows(data_dir)} == by


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ITEM = st.fixed_dictionaries(
    {"id": st.text(max_size=200) | st.integers(), "label": JSON},
    optional={"item": st.integers() | st.text(max_size=3), "extra": JSON},
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=JSON | ITEM | st.lists(ITEM, max_size=5))
def test_hostile_feedback_bodies_are_refused_cleanly(
    served: tuple[httpx.Client, str], body: Any
) -> None:
    http, _ = served
    response = http.post(
        "/v1/feedback",
        content=json.dumps(body),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code in {400, 404, 413, 422}, response.text
    assert "error" in response.json()


def test_feedback_lists_and_keys_are_bounded(served: tuple[httpx.Client, str]) -> None:
    http, _ = served
    many = [{"id": "x", "label": 1}] * 1025
    assert http.post("/v1/feedback", json=many, headers=AUTH).status_code == 413
    wide = {"id": "x", "label": 1, **{f"k{i}": 0 for i in range(100)}}
    assert http.post("/v1/feedback", json=wide, headers=AUTH).status_code == 400
    long_id = {"id": "x" * 8193, "label": 1}
    assert http.post("/v1/feedback", json=long_id, headers=AUTH).status_code == 422
    past_sqlite = {"id": "x", "label": 1, "item": 2**63}  # SQLite's OverflowError was a 500
    assert http.post("/v1/feedback", json=past_sqlite, headers=AUTH).status_code == 422


def test_an_id_the_log_stores_cut_or_cleaned_is_labelled_as_it_was_answered(
    served: tuple[httpx.Client, str], data_dir: Path
) -> None:
    """The log keeps 128 characters of an id and no NUL; the client only knows its answer's id
    (a 404 after 2 s, or a 422, and the label lost: the tenth audit)."""
    http, _ = served
    for sent in ("nul\x00id", "long-" + "y" * 300):
        answered = http.post("/v2/models/tiny/infer", json={**V2_BODY, "id": sent}).json()["id"]
        assert answered == sent
        wait_for_rows(data_dir, 1)
        labelled = http.post("/v1/feedback", json={"id": answered, "label": 2}, headers=AUTH)
        assert labelled.status_code == 200, labelled.text
    assert sorted(r["label"] for r in rows(data_dir)) == [2, 2]


def test_sigterm_flushes_the_queued_records(tmp_path: Path, data_dir: Path) -> None:
    repo = make_model_repo(tmp_path, lecture=False)
    env = {**os.environ, "POLL_INTERVAL_S": "0", "PROVIDERS": "CPUExecutionProvider"}
    command = service_command("--model-repository", str(repo))
    with server_process(command, env=env, how=signal.SIGTERM) as server:
        server.wait_ready()
        batch = {**V2_BODY, "inputs": [{**V2_BODY["inputs"][0], "shape": [64, 32, 32, 3],  # type: ignore[dict-item]
                                        "data": np.tile(IMAGE.ravel(), 64).tolist()}]}  # fmt: skip
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(20):
                assert http.post("/v2/models/tiny/infer", json=batch).status_code == 200
    assert server.process.returncode == 0
    assert len(rows(data_dir)) == 20 * 64
