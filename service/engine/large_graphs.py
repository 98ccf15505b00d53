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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from http import HTTPStatus
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort

from service.core.card import MODEL_FILE
from service.core.errors import ServingError
from service.engine import thread_policy
from service.engine.external_data import ORT_FORMAT

log = logging.getLogger(__name__)

T = TypeVar("T")

LARGE_GRAPH_BYTES = 8 * 1024 * 1024  # onnx's parse and shape inference: about 15 ms in process
_WRITE_CHUNK = 1 << 30  # one write() moves at most 2 GiB - 4 kB on Linux
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
    load the bytes then. Its external data files come from memory or from the version folder,
    as ``onnxruntime_session`` says, not from beside such a path."""
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
    external: Mapping[str, bytes] | None = None,
) -> ort.InferenceSession:
    """A session of ``model_bytes`` (and ``appended``: serialized fields protobuf merges into
    the model, as ``activations`` adds outputs); a large graph is loaded by path
    (``graph_path``), so that onnxruntime's parse does not hold the interpreter. A graph in
    onnxruntime's own format (ORT) is loaded as bytes: by path onnxruntime tells that format by
    the file's name, which a memory file lacks.

    External data files (weights a graph keeps beside ``model.onnx``) are given in memory
    (``external``, by the names the graph gives them: ``external_data``); one not among them
    onnxruntime would read from ``data_folder`` (the version folder) alone, refusing a name that
    leaves it. Its errors name ``model.onnx`` and the version folder, no path."""
    shown: dict[str, str] = {}
    if external:  # as onnxruntime reads them, byte for byte, but never mapped from the file
        names, contents = list(external), list(external.values())
        sess_options.add_external_initializers_from_files_in_memory(
            names, contents, [len(content) for content in contents]
        )
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
            raise RuntimeError(_QUOTED_PATH.sub(_hidden, message)) from None


def _hidden(quoted: re.Match[str]) -> str:
    """A quoted path on the server hidden (where a link out of the version folder leads, say);
    a node's name such as "/conv1/Conv" kept."""
    text = quoted.group(0)[1:-1]
    folder = os.path.dirname(text)
    on_server = os.path.lexists(text) or (folder != "/" and os.path.isdir(folder))
    return '"(a path on the server)"' if on_server else quoted.group(0)
