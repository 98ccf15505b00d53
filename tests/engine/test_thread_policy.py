"""Thread scheduling (``service.engine.thread_policy``): ``batch`` puts the calling thread under
SCHED_BATCH, ``normal`` leaves it alone, and a refusal leaves it as it was, logged, not raised."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from service.engine import thread_policy
from service.engine.thread_policy import ThreadScheduling


def policy_in_a_new_thread(scheduling: ThreadScheduling) -> int:
    seen: list[int] = []

    def body() -> None:
        thread_policy.apply(scheduling)
        seen.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


def test_batch_sets_sched_batch_on_that_thread_alone_and_normal_leaves_it() -> None:
    assert policy_in_a_new_thread("batch") == os.SCHED_BATCH
    assert policy_in_a_new_thread("normal") == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread is untouched


def test_a_refused_policy_is_logged_and_the_thread_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.INFO, logger=thread_policy.__name__):
        assert policy_in_a_new_thread("batch") == os.SCHED_OTHER
    assert "SCHED_BATCH refused" in caplog.text
