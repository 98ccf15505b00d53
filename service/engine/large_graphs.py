"""Reading a large graph without holding the interpreter.

onnx's Python API holds the GIL for as long as it parses (0.6 ms a MB here) and infers shapes
(about 1.3 ms a MB), and onnxruntime loading from bytes holds it for its own parse (0.16 s for
268 MB): a 300 MB ``model.onnx`` held every request of a worker up to a second at a time while
it loaded. A graph of ``LARGE_GRAPH_BYTES`` or more is therefore read with onnx in a child
process of its own (``in_child``), which reads the file again and checks its sha256 against the
bytes the server holds, and onnxruntime loads it by path (``graph_path``: a memfd of those
bytes), which it does without the GIL. Smaller graphs take a few ms in process, as before.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import onnxruntime as ort

from service.core.card import MODEL_FILE
from service.core.errors import ServingError
from service.engine import thread_policy

log = logging.getLogger(__name__)

T = TypeVar("T")

LARGE_GRAPH_BYTES = 8 * 1024 * 1024  # onnx's parse and shape inference: about 15 ms in process
_WRITE_CHUNK = 1 << 30  # one write() moves at most 2 GiB - 4 kB on Linux


def is_large(model_bytes: bytes) -> bool:
    return len(model_bytes) >= LARGE_GRAPH_BYTES


def in_child(
    scheduling: thread_policy.ThreadScheduling, work: Callable[..., T], *args: object
) -> T:
    """``work(*args)`` in a fresh child process (``work`` module-level; its arguments, result
    and errors picklable), blocking: call it off the event loop. The child lives for this one
    job, so what onnx made of a large graph is given back to the system with it. Where no child
    can start (no semaphores without /dev/shm, as in some sandboxes) it runs here, logged."""
    try:
        pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=thread_policy.apply,
            initargs=(scheduling,),
        )
    except (OSError, ImportError) as exc:
        log.warning("no child process for a large graph (%s): read in this process", exc)
        return work(*args)
    with pool:
        try:
            return pool.submit(work, *args).result()
        except BrokenProcessPool:
            raise ServingError(
                "the child process reading the graph died (out of memory?); "
                "it is tried again when its files change or on a repository load"
            ) from None


@contextlib.contextmanager
def graph_path(model_bytes: bytes) -> Iterator[str | None]:
    """A path onnxruntime can load ``model_bytes`` from (an anonymous memory file of this
    process, gone when the block ends), or None where there is none (not Linux, no /proc): load
    the bytes then. A graph loaded from such a path cannot name external data files (onnxruntime
    finds no folder to resolve them in), where one loaded as bytes names them in the server's
    working directory: neither reads files of the model's folder beside ``model.onnx``."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        yield None
        return
    fd = create("model.onnx", os.MFD_CLOEXEC)
    try:
        if not os.path.exists(f"/proc/self/fd/{fd}"):
            yield None
            return
        view = memoryview(model_bytes)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK])  # lets go of the GIL
            view = view[written:]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def onnxruntime_session(
    model_bytes: bytes, sess_options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    """A session of ``model_bytes``; a large graph is loaded by path (``graph_path``), so that
    onnxruntime's parse does not hold the interpreter. Its errors name ``model.onnx``."""
    with graph_path(model_bytes) if is_large(model_bytes) else contextlib.nullcontext() as path:
        if path is None:
            return ort.InferenceSession(model_bytes, sess_options=sess_options, providers=providers)
        try:
            return ort.InferenceSession(path, sess_options=sess_options, providers=providers)
        except Exception as exc:
            raise RuntimeError(str(exc).replace(path, MODEL_FILE)) from None
