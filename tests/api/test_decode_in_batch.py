"""Bodies decoded in their batch (``dataplane/decode_in_batch.py``): while a model's thread is
busy, a plain JSON body is decoded on that thread just before its run. Every body must get the
answer, or the error, that it gets decoded on the loop; the ones that need more than a plain
request (another version, shared memory, classification, a timeout, too many images) go on along
the usual path with their decode. In process, with the model's thread held in a run."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.api.rest import infer as rest_infer
from service.api.rest.app import create_app
from service.dataplane import build
from tests.support.answers import same_answer
from tests.support.apps import make_settings
from tests.support.models import make_model_repo, tiny_reference

pytestmark = pytest.mark.anyio
URL = "/v2/models/tiny/infer"


def pixels(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(v) for v in rng.integers(0, 256, n * 3072)]


def body(
    data: object = None, shape: list[int] | None = None, datatype: str = "UINT8", **extra: Any
) -> bytes:
    tensor = {
        "name": "images",
        "shape": shape or [1, 32, 32, 3],
        "datatype": datatype,
        "data": pixels(1, 0) if data is None else data,
    }
    return orjson.dumps({"inputs": [tensor], **extra})


BODIES = {
    "plain": body(),
    "two images, an id, outputs named": body(
        pixels(2, 1), [2, 32, 32, 3], id="r-1", outputs=[{"name": "probabilities"}]
    ),
    "FP32": body([0.25] * 3072, datatype="FP32"),
    "binary outputs": body(parameters={"binary_data_output": True}),
    "malformed": b"{not json",
    "no inputs": b'{"inputs": []}',
    "wrong shape": body([0] * 4096, [1, 32, 32, 4]),
    "too few values": body([0] * 10),
    "INT8": body([0] * 3072, datatype="INT8"),
    "past 255": body([300] * 3072),
    "strings": body(["a"] * 3072),
    "FP32 past 1": body([2.0] * 3072, datatype="FP32"),
    "negative dimension": body([0] * 3072, [1, -32, 32, 3]),
    "more images than allowed": body([0] * 3072 * 9, [9, 32, 32, 3]),
    "another input's name": orjson.dumps(
        {"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": [0]}]}
    ),
    "an unknown output": body(outputs=[{"name": "x"}]),
    "the served version named": body(model_version="2"),
    "a version not served": body(model_version="1"),
    "another model named": body(model_name="other"),
    "the model named": body(model_name="tiny"),
    "a timeout": body(parameters={"timeout": 5_000_000}),
    "classification": body(
        outputs=[{"name": "probabilities", "parameters": {"classification": 2}}]
    ),
    "shared memory unregistered": body(
        outputs=[{"name": "probabilities", "parameters": {"shared_memory_region": "nope"}}]
    ),
}
PLAIN = {  # the bodies answered from their batch alone
    "plain",
    "two images, an id, outputs named",
    "FP32",
    "binary outputs",
    "the served version named",
    "the model named",
}


class HeldModel:
    """The model's runs, each held until ``gate`` is set while ``hold`` is (not at first)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime, self.run = runtime, runtime.run
        self.hold, self.running, self.gate = False, threading.Event(), threading.Event()

    def batcher_pending(self) -> int:
        return int(self.runtime.pending)

    def __call__(self, images: Any, outputs: Any = None) -> Any:
        if self.hold:
            self.running.set()
            self.gate.wait(30)
        return self.run(images, outputs)


@asynccontextmanager
async def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, HeldModel]]:
    """The app over ``tiny`` v2, each request to the batcher (no inline runs), decoding in the
    batch whatever cores the test has, its runs held as ``HeldModel`` says."""
    repo = make_model_repo(tmp_path, lecture=False)
    settings = make_settings(
        repo, max_images_per_request=8, inline_run_max_us=0, decode_in_batch=True, **changes
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.dataplane.model("tiny")
        held = HeldModel(runtime)
        monkeypatch.setattr(runtime, "run", held)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, held


async def behind_a_held_run(
    http: httpx.AsyncClient, held: HeldModel, queued: int, wait_s: float = 0.0
) -> dict[str, Any]:
    """``BODIES``' answers, sent while a run holds the model's thread, released once ``queued``
    of them wait for it and ``wait_s`` more has passed."""
    held.hold = True
    first = asyncio.ensure_future(answer(http, BODIES["plain"]))
    assert await asyncio.to_thread(held.running.wait, 10)  # a run holds the model's thread
    held.hold = False
    pending = asyncio.ensure_future(answers(http, BODIES))
    for _ in range(1000):
        if held.batcher_pending() >= queued:
            break
        await asyncio.sleep(0.01)
    assert held.batcher_pending() >= queued, f"{held.batcher_pending()} of {queued} queued"
    await asyncio.sleep(wait_s)
    held.gate.set()
    replies, ahead = await pending, await first
    assert ahead[0] == 200
    return replies


def decode_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads the REST decode runs on, in order (the name of each call's)."""
    threads: list[str] = []
    decode = rest_infer.decode_infer_request

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(rest_infer, "decode_infer_request", recorded)
    return threads


async def answer(http: httpx.AsyncClient, body: bytes) -> tuple[int, Any]:
    """The status and the answer: an error's bytes, or a 200's JSON with its outputs' values
    as lists (``same_answer``)."""
    reply = await http.post(URL, content=body, headers={"Content-Type": "application/json"})
    if reply.status_code != 200:
        return reply.status_code, reply.content
    length = int(reply.headers.get("Inference-Header-Content-Length", len(reply.content)))
    head, offset = orjson.loads(reply.content[:length]), length
    for output in head["outputs"]:
        if "data" not in output:
            size = output["parameters"]["binary_data_size"]
            values = np.frombuffer(reply.content[offset : offset + size], np.float32)
            output["data"], offset = values.tolist(), offset + size
    return 200, head


async def answers(http: httpx.AsyncClient, bodies: dict[str, bytes]) -> dict[str, Any]:
    """Each body's status and answer, sent together."""
    replies = await asyncio.gather(*(answer(http, b) for b in bodies.values()))
    return dict(zip(bodies, replies, strict=True))


async def test_bodies_decoded_in_their_batch_answer_as_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = decode_threads(monkeypatch)
    async with served(tmp_path, monkeypatch) as (http, held):
        with monkeypatch.context() as off:
            off.setattr(rest_infer, "batch_decoding", lambda plane, runtime: None)
            on_the_loop = await answers(http, BODIES)
        assert set(threads) == {"MainThread"}
        threads.clear()
        in_the_batch = await behind_a_held_run(http, held, queued=len(BODIES))
    assert in_the_batch.keys() == on_the_loop.keys()
    for name, got in in_the_batch.items():
        assert same_answer(got, on_the_loop[name]), (name, got, on_the_loop[name])
    # each body was decoded once, on the model's thread: the plain ones ran there, the others
    # went on from their decode along the usual path
    assert threads == ["MainThread"] + ["batcher-tiny-2"] * len(BODIES)  # the held one first
    for name in PLAIN:
        assert in_the_batch[name][0] == 200, (name, in_the_batch[name])
    probabilities = in_the_batch["two images, an id, outputs named"][1]
    assert probabilities["id"] == "r-1"
    expected = tiny_reference(np.array(pixels(2, 1), np.uint8).reshape(2, 32, 32, 3))
    np.testing.assert_allclose(
        np.array(probabilities["outputs"][0]["data"]).reshape(2, 10), expected, atol=1e-5
    )


@pytest.mark.parametrize(
    ("setting", "workers", "cores", "on"),
    [
        ("auto", 1, {0}, True),  # pinned to one core: the loop and the model share it
        ("auto", 1, {0, 1}, False),  # two: decoding on the loop overlaps the model's run
        ("auto", 2, {0, 1}, True),  # a core each
        ("auto", 2, {0, 1, 2, 3}, False),
        (True, 1, {0, 1}, True),
        (False, 1, {0}, False),
    ],
)
def test_decode_in_batch_auto_is_on_where_a_worker_has_one_core(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: object,
    workers: int,
    cores: set[int],
    on: bool,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    settings = make_settings(tmp_path, decode_in_batch=setting, workers=workers)
    assert build.decodes_in_batch(settings) is on


async def test_with_a_request_timeout_bodies_are_decoded_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUEST_TIMEOUT_US answers a request still queued past it at once: a body queued undecoded
    would get that, not why it is bad. So with it set, bodies are decoded as they come, and
    behind a held run past the timeout a bad body hears why, a valid one the timeout (one with
    its own longer ``timeout``, its answer)."""
    async with served(tmp_path, monkeypatch) as (http, held):
        with monkeypatch.context() as off:
            off.setattr(rest_infer, "batch_decoding", lambda plane, runtime: None)
            on_the_loop = await answers(http, BODIES)
    valid = {name for name, (status, _) in on_the_loop.items() if status == 200}
    threads = decode_threads(monkeypatch)
    async with served(tmp_path / "timed", monkeypatch, request_timeout_us=20_000) as (http, held):
        timed = await behind_a_held_run(http, held, queued=len(valid), wait_s=0.1)
    assert set(threads) == {"MainThread"}
    for name, (status, got) in timed.items():
        if name in valid and name != "a timeout":
            assert status == 503 and b"Request timeout expired" in got, (name, got)
        else:
            assert same_answer((status, got), on_the_loop[name]), (name, got, on_the_loop[name])
