"""How the threads beside the event loop are scheduled: a model's thread (and onnxruntime's pool
threads, which take the policy of the thread that made the session), the work pool, loads and
polls, the prediction log's writer.

By default Linux lets a thread that wakes take the core from the one running there (wake-up
preemption). When the loop shares a core with a model's thread, each request the loop hands over
woke that thread and gave it the core at once: a run of one or two images began while the loop
still had the rest of a burst to read, and everyone else waited behind it. Under ``SCHED_BATCH``
a thread keeps its fair share of the CPU but does not preempt on waking, so the loop reads what
is waiting first and the next run takes all of it (docs/benchmarks.md, "The 64-client p99").
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

log = logging.getLogger(__name__)

ThreadScheduling = Literal["batch", "normal"]


def apply(scheduling: ThreadScheduling) -> None:
    """Give the calling thread ``scheduling``. ``normal`` leaves it as the kernel made it; where
    ``batch`` does not exist (not Linux) or is refused (a sandbox), it stays so too, logged."""
    if scheduling == "normal":
        return
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        log.debug("no SCHED_BATCH on this platform: threads keep the default scheduling")
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: this thread (Linux)
    except OSError as exc:
        log.info("SCHED_BATCH refused (%s): this thread keeps the default scheduling", exc)


def executor(scheduling: ThreadScheduling, threads: int | None, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads take ``scheduling`` as they start (``threads`` None: the
    standard library's default count)."""
    return ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix=name, initializer=apply, initargs=(scheduling,)
    )
