"""``bench thread-cpu``'s reading of /proc: a thread's CPU time, found by process group."""

from __future__ import annotations

import os
import threading
import time

from bench.placement import group_dirs
from bench.thread_cpu import thread_ticks


def test_a_busy_thread_has_its_cpu_counted_and_an_idle_one_not() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy, idle = threading.Thread(target=spin), threading.Thread(target=stop.wait)
    busy.start()
    idle.start()
    try:
        before = thread_ticks([os.getpid()])
        time.sleep(0.5)
        after = thread_ticks([os.getpid()])
    finally:
        stop.set()
        busy.join()
        idle.join()
    spent = {tid: after[pid, tid][1] - ticks for (pid, tid), (_, ticks) in before.items()}
    assert busy.native_id is not None and idle.native_id is not None
    assert spent[busy.native_id] > 0
    assert spent[idle.native_id] == 0


def test_a_process_group_holds_this_process() -> None:
    assert str(os.getpid()) in {folder.name for folder in group_dirs(os.getpgid(0))}
