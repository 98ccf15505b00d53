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
import re
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from http import HTTPStatus
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort

from service.core.card import MODEL_FILE
from service.core.errors import ServingError
from service.engine import thread_policy

log = logging.getLogger(__name__)

T = TypeVar("T")

LARGE_GRAPH_BYTES = 8 * 1024 * 1024  # onnx's parse and shape inference: about 15 ms in process
_WRITE_CHUNK = 1 << 30  # one write() moves at most 2 GiB - 4 kB on Linux
ORT_FORMAT = b"ORTM"  # the flatbuffer identifier of onnxruntime's own format, at bytes 4-8
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
_QUOTED_PATH = re.compile(r'"/[^"]*"')


def is_large(model_bytes: bytes) -> bool:
    return len(model_bytes) >= LARGE_GRAPH_BYTES


class ChildFailed(ServingError):
    """The child process itself failed (it died, or could not start), not the graph: a load
    is tried again at the next poll, a feature-map request may be sent again."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


def _start_child(scheduling: thread_policy.ThreadScheduling) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which ends the child
    thread_policy.apply(scheduling)


def in_child(
    scheduling: thread_policy.ThreadScheduling, work: Callable[..., T], *args: object
) -> T:
    """``work(*args)`` in a fresh child process (``work`` module-level; its arguments, result
    and errors picklable), blocking: call it off the event loop. The child lives for this one
    job, so what onnx made of a large graph is given back to the system with it. Where no child
    can start (no semaphores without /dev/shm, as in some sandboxes) it runs here, logged; a
    child that dies or fails to start is ``ChildFailed``."""
    try:
        pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(scheduling,),
        )
    except (OSError, ImportError) as exc:
        log.warning("no child process for a large graph (%s): read in this process", exc)
        return work(*args)
    with pool:
        try:
            job = pool.submit(work, *args)  # the child starts here
        except (OSError, RuntimeError) as exc:
            raise ChildFailed(f"no child process could start to read the graph: {exc}") from None
        try:
            return job.result()
        except BrokenProcessPool:
            raise ChildFailed("the child process reading the graph died (out of memory?)") from None


@contextlib.contextmanager
def graph_path(*parts: bytes) -> Iterator[str | None]:
    """A path onnxruntime can load the graph ``parts`` make up from (an anonymous memory file of
    this process, gone when the block ends), or None where there is none (not Linux, no /proc):
    load the bytes then. A graph loaded from such a path cannot name external data files
    (onnxruntime finds no folder to resolve them in), where one loaded as bytes names them in
    the server's working directory: neither reads files of the model's folder."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        yield None
        return
    fd = create("model.onnx", os.MFD_CLOEXEC)
    try:
        if not os.path.exists(f"/proc/self/fd/{fd}"):
            yield None
            return
        for part in parts:
            view = memoryview(part)
            while view:
                written = os.write(fd, view[:_WRITE_CHUNK])  # lets go of the GIL
                view = view[written:]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def onnxruntime_session(
    model_bytes: bytes,
    sess_options: ort.SessionOptions,
    providers: list[str],
    appended: bytes = b"",
    data_folder: Path | None = None,
) -> ort.InferenceSession:
    """A session of ``model_bytes`` (and ``appended``: serialized fields protobuf merges into
    the model, as ``activations`` adds outputs); a large graph is loaded by path
    (``graph_path``), so that onnxruntime's parse does not hold the interpreter. A graph in
    onnxruntime's own format (ORT) is loaded as bytes: by path onnxruntime tells that format by
    the file's name, which a memory file lacks.

    External data files (weights a graph keeps beside ``model.onnx``, as exporters write for
    large models) are read from ``data_folder`` (the version folder) and from nowhere else:
    onnxruntime refuses a name that leaves it, through ``..`` or a link (without a folder, from
    its working directory). Its errors name ``model.onnx`` and the version folder, no path."""
    shown: dict[str, str] = {}
    if data_folder is not None:
        folder = str(data_folder.resolve())
        sess_options.add_session_config_entry(EXTERNAL_DATA_FOLDER, folder)
        shown[folder] = "the version folder"
    by_path = is_large(model_bytes) and model_bytes[4:8] != ORT_FORMAT
    with graph_path(model_bytes, appended) if by_path else contextlib.nullcontext() as path:
        if path is not None:
            shown[path] = MODEL_FILE
        graph = path if path is not None else model_bytes + appended if appended else model_bytes
        try:
            return ort.InferenceSession(graph, sess_options=sess_options, providers=providers)
        except Exception as exc:
            message = str(exc)
            for where, name in shown.items():
                message = message.replace(where, name)
            # any other path it quotes (where a link out of the folder leads, say)
            raise RuntimeError(_QUOTED_PATH.sub('"(a path on the server)"', message)) from None
