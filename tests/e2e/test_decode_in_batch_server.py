"""Decoding in the batch through a real server: ``python -m service`` over the shipped models with
``DECODE_IN_BATCH=true`` (``auto`` turns it on only where a worker has one core), 64 keep-alive
clients sending the lecture model 1-image JSON while other bodies come one by one: every load
request is answered 200, and each other body (bad ones, ones that go on along the usual path, a
plain one) gets what it got from the same server idle, decoded on the loop."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.bodies import v2_json
from bench.load import http_load
from bench.server import running_service
from tests.support.answers import same_answer

PATH = "/v2/models/cifar10_cnn/infer"


def body(data: object = None, datatype: str = "UINT8", **extra: Any) -> bytes:
    values = [7] * 3072 if data is None else data
    tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": datatype, "data": values}
    return orjson.dumps({"inputs": [tensor], **extra})


BODIES = {
    "plain, with an id": body(id="odd-1"),
    "malformed": b'{"inputs": [',
    "too few values": body([0] * 10),
    "FP32 past 1": body([2.0] * 3072, datatype="FP32"),
    "an unknown output": body(outputs=[{"name": "nope"}]),
    "another model named": body(model_name="cifar10_cnn_bn"),
    "version 1 named": body(model_version="1"),
    "classification": body(
        outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]
    ),
}


def answer(http: httpx.Client, content: bytes) -> tuple[int, Any]:
    reply = http.post(PATH, content=content, headers={"Content-Type": "application/json"})
    return reply.status_code, reply.json() if reply.status_code == 200 else reply.content


def test_a_real_server_decoding_in_the_batch_answers_every_body_under_load(
    tmp_path: Path,
) -> None:
    env = {"LOG_LEVEL": "warning", "WORKERS": "1", "DECODE_IN_BATCH": "true"}
    with (
        running_service(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=f"http://{server.address}", timeout=30) as http,
        ThreadPoolExecutor(1) as pool,
    ):
        idle = {name: answer(http, content) for name, content in BODIES.items()}
        load = pool.submit(
            http_load, server.address, PATH, v2_json(1, "FP32"), clients=64, seconds=2
        )
        time.sleep(1.5)  # past the load's warm-up: the model's thread is busy
        busy = {name: answer(http, content) for name, content in BODIES.items()}
        summary = load.result()
    assert summary["errors"] == 0 and summary["requests"] > 100, summary
    for name, got in busy.items():
        assert same_answer(got, idle[name]), (name, got, idle[name])
    assert idle["plain, with an id"][0] == 200 and idle["plain, with an id"][1]["id"] == "odd-1"
    assert {status for status, _ in idle.values()} >= {200, 400, 422}
    assert idle["classification"][0] == 200
