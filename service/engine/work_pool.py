"""The bounded pool where a request's CPU work runs (decoding bodies and images, encoding feature
maps), so the event loop only waits for it and keeps answering everyone else.

Threads are enough for work that lets go of the interpreter (Pillow, numpy on large arrays) but
not for work that keeps it: simdjson and orjson hold the GIL for a whole parse (0.4 s for 60 MB
of JSON numbers here), and the event loop waits for the GIL as long. The largest bodies are
therefore decoded in a child process of the pool (``run_decoding``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from service.core.errors import Overloaded
from service.engine import thread_policy

log = logging.getLogger(__name__)

T = TypeVar("T")


class TooHeavyForTheLoop(Exception):
    """Raised by work begun on the event loop that finds itself heavier than it looked (a small
    image file that decodes to many pixels); ``run_here_if_light`` runs it again on the pool."""


class TooHeavyForThisProcess(Exception):
    """Raised by decoding work that finds, partway, that it must hold the interpreter for long
    (a JSON body simdjson declined, read again into Python objects) where that is not allowed
    (``heavy_allowed``): ``run_decoding`` runs it again in the child process."""


_in_child = False  # set in the child process by its initializer
_thread = threading.local()  # ``allowed``: a pool thread standing in for a child that cannot be


def heavy_allowed() -> bool:
    """Whether work may hold the interpreter for long here: in the pool's child process, or on
    a thread standing in for it where no child can run."""
    return _in_child or getattr(_thread, "allowed", False)


def _start_child(scheduling: thread_policy.ThreadScheduling) -> None:
    global _in_child
    _in_child = True
    thread_policy.apply(scheduling)


def _allowing_heavy(work: Callable[..., T], *args: object) -> T:
    _thread.allowed = True
    try:
        return work(*args)
    finally:
        _thread.allowed = False


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (not on a pool thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class WorkPool:
    """``threads`` threads, and at most ``max_waiting`` jobs queued behind them: past that a
    request is refused (503, retry) rather than queueing work without end."""

    def __init__(
        self,
        threads: int,
        max_waiting: int,
        scheduling: thread_policy.ThreadScheduling = "batch",
        process_bytes: int = 0,
    ) -> None:
        self._executor = thread_policy.executor(scheduling, threads, "request-work")
        self._capacity = threads + max_waiting
        self._taken = 0  # jobs queued or running; touched on the event loop only
        self._scheduling = scheduling
        self.process_bytes = process_bytes  # decoding this many bytes or more: the child (0: never)
        self._processes: ProcessPoolExecutor | None = None  # started on first use
        self._processes_lock = threading.Lock()

    @property
    def taken(self) -> int:
        return self._taken

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on a pool thread. A caller that is cancelled stops waiting; the job
        still counts against the bound until it has really finished."""
        return await self._counted(lambda: self._executor.submit(work, *args))

    async def run_then(self, then: Callable[[], None], work: Callable[..., T], *args: object) -> T:
        """``run``, and ``then()`` on the loop once the job has really finished (a caller that
        was cancelled included) or was refused."""
        return await self._counted(lambda: self._executor.submit(work, *args), then)

    async def run_in_process(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` in the pool's child process, started on first use: for work that
        holds the interpreter for long. ``work`` must be a module-level function, and its
        arguments, result and errors picklable. Bounded as ``run``; a child that dies (killed
        for memory, say) is replaced, and the request it was decoding gets a 503; one that died
        idle is replaced before the job is given to it. Where no child can start (no semaphores
        without /dev/shm, as in some sandboxes), the job and every later one take a thread."""
        child: ProcessPoolExecutor | None = None  # the one given the job

        def submit() -> Future[T]:
            nonlocal child
            try:
                child, job = self._give_child(work, *args)
            except (OSError, ImportError) as exc:
                self._no_child(exc)
                return self._executor.submit(_allowing_heavy, work, *args)
            return job

        try:
            return await self._counted(submit)
        except BrokenProcessPool:
            if child is not None:
                self._replace(child)
            raise Overloaded("the process decoding this request stopped; retry shortly") from None

    async def run_decoding(
        self, size: int, light: bool, work: Callable[..., T], *args: object
    ) -> T:
        """``work(*args)``, which decodes ``size`` bytes of a request: right here when ``light``
        (``run_here_if_light``), in the child process from ``process_bytes`` up (``work`` then
        as ``run_in_process`` asks), else on a pool thread; work that raises
        ``TooHeavyForThisProcess`` is run again in the child (on a thread if there is none)."""
        if not light and self.process_bytes and size >= self.process_bytes:
            return await self.run_in_process(work, *args)
        try:
            return await self.run_here_if_light(light, work, *args)
        except TooHeavyForThisProcess:
            if self.process_bytes:
                return await self.run_in_process(work, *args)
            return await self.run(_allowing_heavy, work, *args)  # the operator's choice

    async def _counted(
        self, submit: Callable[[], Future[T]], then: Callable[[], None] | None = None
    ) -> T:
        """A job ``submit`` starts, counted against the bound until it has really finished
        (``then`` is called on the loop then, or at once if the job is refused)."""
        loop = asyncio.get_running_loop()
        try:
            if self._taken >= self._capacity:
                raise Overloaded("the server is busy decoding other requests; retry shortly")
            job = submit()  # or a closed pool, no thread to start
        except BaseException:  # refused: nothing will finish
            if then is not None:
                then()
            raise
        self._taken += 1
        job.add_done_callback(lambda _: self._finished(loop, then))
        try:
            return await asyncio.wrap_future(job)
        finally:
            # A failed job's future holds its error, whose traceback holds this frame, whose
            # ``job`` holds the future: a cycle that kept each failed request's decoded values
            # (52 MB for a 3.1 MB gRPC message) until a full collection, which seldom comes.
            del job

    def _child(self) -> ProcessPoolExecutor:
        """The child process's executor, started now if it is not yet: spawned, not forked (the
        parent holds onnxruntime's and gRPC's threads), scheduled as the pool's threads are."""
        with self._processes_lock:
            if self._processes is None:
                context = multiprocessing.get_context("spawn")
                self._processes = ProcessPoolExecutor(
                    1, context, initializer=_start_child, initargs=(self._scheduling,)
                )
                log.info("started a process for decoding large request bodies")
            return self._processes

    def _give_child(
        self, work: Callable[..., T], *args: object
    ) -> tuple[ProcessPoolExecutor, Future[T]]:
        """The job given to the child, and the child's executor; a child that died since its
        last job is replaced first."""
        processes = self._child()
        try:
            return processes, processes.submit(work, *args)
        except BrokenProcessPool:
            self._replace(processes)
            processes = self._child()
            return processes, processes.submit(work, *args)

    def _no_child(self, problem: BaseException) -> None:
        """No child process can start here: large bodies are decoded on the threads from now."""
        if self.process_bytes:
            log.warning(
                "no process for decoding large request bodies (%s): they are decoded on the "
                "pool's threads",
                problem,
            )
        self.process_bytes = 0

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Forget a broken child's executor: the next large body starts a new one."""
        with self._processes_lock:
            if self._processes is broken:
                self._processes = None
        log.warning("the process decoding large request bodies stopped; a new one will start")
        broken.shutdown(wait=False, cancel_futures=True)

    async def run_here_if_light(self, light: bool, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` right here when ``light`` (a thread hop costs about 0.3 ms, more than
        decoding a small body), else on the pool; light work that finds itself heavy raises
        ``TooHeavyForTheLoop`` and is run again on the pool."""
        if light:
            try:
                return work(*args)
            except TooHeavyForTheLoop:
                pass
        return await self.run(work, *args)

    def _finished(
        self, loop: asyncio.AbstractEventLoop, then: Callable[[], None] | None = None
    ) -> None:
        """On the job's thread: give its place back, on the loop that counts them."""
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown) counts nothing
            loop.call_soon_threadsafe(self._release, then)

    def _release(self, then: Callable[[], None] | None = None) -> None:
        self._taken -= 1
        if then is not None:
            then()

    def lane(self, running: int, waiting: int, busy: str) -> Lane:
        """A lane of this pool for one kind of costly work (see ``Lane``)."""
        return Lane(self, running, waiting, busy)

    def close(self) -> None:
        """Drop queued jobs; running ones finish on their threads (and in the child, which
        then exits)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._processes_lock:
            processes, self._processes = self._processes, None
        if processes is not None:
            processes.shutdown(wait=False, cancel_futures=True)


class Lane:
    """At most ``running`` jobs of one kind on the pool at once, each counted until it has
    really finished (a caller that went away does not free its place early), and ``waiting``
    more waiting their turn on the loop; past that ``Overloaded`` saying ``busy``. A cheap
    request whose work is costly (the explorer's grid: 0.11-0.15 s for 600 bytes) then takes
    one of the pool's threads at most, never every one."""

    def __init__(self, pool: WorkPool, running: int, waiting: int, busy: str) -> None:
        self._pool, self._busy = pool, busy
        self._most_waiting = waiting
        self._free = running  # touched on the event loop only
        self._turns: collections.deque[asyncio.Future[None]] = collections.deque()

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on the pool in its turn."""
        if self._free > 0:
            self._free -= 1
        elif len(self._turns) >= self._most_waiting:
            raise Overloaded(self._busy)
        else:
            turn = asyncio.get_running_loop().create_future()
            self._turns.append(turn)
            try:
                await turn  # its place is handed over with it
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._give()  # handed over as it went away: to the next one
                else:
                    with contextlib.suppress(ValueError):  # or skipped by ``_give`` already
                        self._turns.remove(turn)
                raise
        return await self._pool.run_then(self._give, work, *args)

    def _give(self) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1
