"""Faults while serving: model files deleted or replaced by garbage, the repository unreadable, an
onnxruntime error during a run. The service keeps serving what it loaded, says what is wrong in
the repository index, and recovers once the files are fixed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi import FastAPI
from onnx import TensorProto, helper, numpy_helper

from service.api.rest.app import create_app
from service.core.card import CARD_FILE, MODEL_FILE
from service.engine.batcher import DynamicBatcher
from service.engine.repository import ModelRepository
from tests.support.apps import ADMIN, make_settings
from tests.support.models import OPSET, make_model_repo, tiny_graph, write_model

pytestmark = pytest.mark.anyio

GOOD = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                    "data": [0] * 3072}]}  # fmt: skip


def poisoned_graph() -> onnx.ModelProto:
    """The tiny graph plus a Gather indexed by the brightest pixel into a 10-element table: any
    pixel over 9 makes onnxruntime fail at run time (index out of bounds); dark images work."""
    graph = tiny_graph()
    g = graph.graph
    g.node.append(helper.make_node("ReduceMax", ["images"], ["brightest"], keepdims=0))
    g.node.append(helper.make_node("Cast", ["brightest"], ["index"], to=TensorProto.INT64))
    g.node.append(helper.make_node("Gather", ["table", "index"], ["offset"], axis=0))
    for node in g.node:  # the head now adds the offset before the softmax
        if node.output[0] == "logits":
            node.output[0] = "raw_logits"
    g.node.append(helper.make_node("Add", ["raw_logits", "offset"], ["logits"]))
    g.initializer.append(numpy_helper.from_array(np.zeros(10, dtype=np.float32), "table"))
    # Topological order: the head (Softmax) must come after the new Add.
    nodes = list(g.node)
    softmax = next(n for n in nodes if n.op_type == "Softmax")
    nodes.remove(softmax)
    nodes.append(softmax)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(graph)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Path]]:
    repo = make_model_repo(tmp_path, lecture=False)
    write_model(repo, "flaky", 1, graph=poisoned_graph())
    app = create_app(make_settings(repo, poll_interval_s=0, max_batch_delay_ms=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=ADMIN
        ) as http:
            yield app, http, repo


async def poll(app: FastAPI) -> None:
    repository: ModelRepository = app.state.dataplane.repository
    await asyncio.to_thread(repository.poll)


async def index(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await http.post("/v2/repository/index")
    assert response.status_code == 200
    return {f"{r['name']}/{r['version']}": r for r in response.json()}


async def still_serving(http: httpx.AsyncClient, tmp_root: Path) -> None:
    response = await http.post("/v2/models/tiny/infer", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "2"
    assert (await http.get("/v2/health/ready")).status_code == 200
    assert (await http.get("/v2/models/tiny/ready")).status_code == 200
    listing = (await http.post("/v2/repository/index")).text + (await http.get("/v1/models")).text
    assert str(tmp_root) not in listing  # no file system paths in what clients see


async def test_model_file_deleted_then_restored(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, http, repo = served
    model = repo / "tiny" / "2" / MODEL_FILE
    original = model.read_bytes()
    model.unlink()
    await poll(app)
    await still_serving(http, repo.parent)
    row = (await index(http))["tiny/2"]
    assert row["state"] == "READY"
    assert "changed on disk" in row["reason"] and MODEL_FILE in row["reason"]

    model.write_bytes(original)
    await poll(app)
    assert (await index(http))["tiny/2"]["reason"] == ""
    await still_serving(http, repo.parent)


async def test_model_file_replaced_by_garbage_then_fixed(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, http, repo = served
    folder = repo / "tiny" / "2"
    original_model, original_card = (
        (folder / MODEL_FILE).read_bytes(),
        (folder / CARD_FILE).read_text(),
    )
    (folder / MODEL_FILE).write_bytes(b"\x08\x07garbage, not a protobuf" * 100)
    await poll(app)
    await still_serving(http, repo.parent)
    assert "sha256" in (await index(http))["tiny/2"]["reason"]

    # Garbage whose card matches it (a botched publish): onnxruntime refuses the graph.
    card = json.loads(original_card)
    card["sha256"] = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    (folder / CARD_FILE).write_text(json.dumps(card))
    await poll(app)
    await still_serving(http, repo.parent)
    assert "onnxruntime cannot load" in (await index(http))["tiny/2"]["reason"]

    (folder / MODEL_FILE).write_bytes(original_model)
    (folder / CARD_FILE).write_text(original_card)
    await poll(app)
    assert (await index(http))["tiny/2"]["reason"] == ""


async def test_repository_folder_unreadable_then_back(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    """Tests run as root, where chmod 000 does not stop reads; a file in the folder's place
    fails every read of it the same way (NotADirectoryError, as a bad mount would)."""
    app, http, repo = served
    away = repo.with_name("models.away")
    repo.rename(away)
    repo.write_text("not a folder")
    await poll(app)
    await still_serving(http, repo.parent)
    rows = await index(http)
    assert all("model repository cannot be read" in r["reason"] for r in rows.values())

    repo.unlink()
    away.rename(repo)
    await poll(app)
    assert all("cannot be read" not in r["reason"] for r in (await index(http)).values())
    await still_serving(http, repo.parent)


async def test_repository_folder_removed_keeps_serving(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, http, repo = served
    away = repo.with_name("models.away")
    repo.rename(away)
    await poll(app)
    await still_serving(http, repo.parent)
    away.rename(repo)
    await poll(app)
    await still_serving(http, repo.parent)


async def test_onnxruntime_error_fails_only_that_request(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, http, repo = served
    bright = {"inputs": [{**GOOD["inputs"][0], "data": [200] * 3072}]}
    failed = await http.post("/v2/models/flaky/infer", json=bright)
    assert failed.status_code == 500
    assert failed.json() == {"error": "inference failed for model 'flaky'"}  # no internals
    assert (await http.post("/v2/models/flaky/infer", json=GOOD)).status_code == 200
    assert (await http.get("/v2/models/flaky/ready")).status_code == 200
    # Concurrent good and bad requests: the good ones still get their answers.
    answers = await asyncio.gather(
        *(
            http.post("/v2/models/flaky/infer", json=bright if i % 4 == 0 else GOOD)
            for i in range(16)
        )
    )
    assert [a.status_code for a in answers] == [500 if i % 4 == 0 else 200 for i in range(16)]
    shutil.rmtree(repo / "flaky")  # removed from disk: no longer served, the rest unaffected
    await poll(app)
    assert (await http.post("/v2/models/flaky/infer", json=GOOD)).status_code == 404
    await still_serving(http, repo.parent)


async def test_a_failing_request_does_not_take_its_batch_down() -> None:
    """Rows over 9 fail the run; a batch mixing them with good rows fails, and the batcher then
    runs each request alone, so only the bad one hears of the failure."""
    runs: list[int] = []

    def run(rows: np.ndarray) -> dict[str, np.ndarray]:
        runs.append(len(rows))
        if (rows > 9).any():
            raise RuntimeError("index out of bounds")
        return {"out": rows.sum(axis=1, keepdims=True)}

    batcher = DynamicBatcher(run, max_batch_size=64, max_batch_delay_ms=100)
    try:
        good, bad, other = (np.full((2, 3), v, dtype=np.int64) for v in (1, 50, 2))
        results = await asyncio.gather(
            batcher.submit(good), batcher.submit(bad), batcher.submit(other), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert runs[0] == 6  # they did share a run first
    assert isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[0]["out"], [[3], [3]])  # type: ignore[index]
    np.testing.assert_array_equal(results[2]["out"], [[6], [6]])  # type: ignore[index]
