"""The raw ASGI ceiling with dynamic batching: what a Python server on uvicorn + httptools + uvloop
does per core for 1-image v2 JSON requests when it batches and does nothing else. The body is
parsed as the service parses it (simdjson, the numbers as one buffer), FP32 -> uint8 as the
service does, no checks; requests wait in a list, and whenever the model's thread (one, under
SCHED_BATCH as the service's) is free it runs everything waiting in one onnxruntime call.
The lecture model's answer only (``probabilities``); any POST is an infer.

    MODEL_ONNX=models/cifar10_cnn/1/model.onnx uvicorn --app-dir bench --http httptools \
        --loop uvloop --no-access-log --port 8000 ceiling_batched:app
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import simdjson

READY = b'{"ready":true}'


def _batch_policy() -> None:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.environ["MODEL_ONNX"], options, ["CPUExecutionProvider"])


MODEL_THREAD = ThreadPoolExecutor(1, initializer=_batch_policy)
SESSION = MODEL_THREAD.submit(_session).result()  # its pool threads take the thread's policy
waiting: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
runner: asyncio.Task[None] | None = None  # running everything waiting, until nothing waits


def _run(images: list[np.ndarray]) -> np.ndarray:
    (probabilities,) = SESSION.run(["probabilities"], {"images": np.concatenate(images)})
    return np.asarray(probabilities)


async def _runner() -> None:
    """Run everything waiting, again and again, until nothing waits."""
    global waiting
    loop = asyncio.get_running_loop()
    while waiting:
        batch, waiting = waiting, []
        probabilities = await loop.run_in_executor(MODEL_THREAD, _run, [x for x, _ in batch])
        for row, (_, answer) in enumerate(batch):
            answer.set_result(probabilities[row : row + 1])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global runner
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await reply(send, READY)
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request: Any = simdjson.Parser().parse(body)
    tensor = request["inputs"][0]
    values = np.frombuffer(tensor["data"].as_buffer(of_type="d"), np.float64)
    images = np.rint(values.reshape(list(tensor["shape"])) * 255.0).astype(np.uint8)
    answer: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
    waiting.append((images, answer))
    if runner is None or runner.done():
        runner = asyncio.ensure_future(_runner())
    probabilities = await answer
    output = {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": list(probabilities.shape),
        "data": probabilities.ravel().tolist(),
    }
    answer_body = {"model_name": "cifar10_cnn", "model_version": "1", "outputs": [output]}
    await reply(send, orjson.dumps(answer_body))


async def reply(send: Any, payload: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
