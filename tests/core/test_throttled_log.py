"""Warnings any client can cause are logged once an interval, with how many came meanwhile."""

from __future__ import annotations

import logging
import time

import pytest

from service.core.throttled_log import MAX_KINDS, ThrottledLog


def test_a_warning_is_logged_once_an_interval_with_the_count_it_stood_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.throttled")
    throttled = ThrottledLog(logger, interval_s=0.2)
    with caplog.at_level("WARNING", logger="test.throttled"):
        for _ in range(5):
            throttled.warning("bad request from %s", "a client")
        throttled.warning("another kind")
        time.sleep(0.25)
        throttled.warning("bad request from %s", "a client")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from a client",
        "another kind",
        "bad request from a client (4 more since the last such line)",
    ]
    assert throttled.level == logger.level and throttled.name == "test.throttled"


def test_kinds_past_the_memory_share_one_line_an_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that makes every line a new kind (an address of its own each) still writes a
    bounded number of lines: past MAX_KINDS, the new kinds are throttled as one."""
    logger = logging.getLogger("test.throttled.kinds")
    now = [0.0]
    throttled = ThrottledLog(logger, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="test.throttled.kinds"):
        for n in range(MAX_KINDS * 4):
            throttled.warning("refused %d", n, key=str(n))
    assert len(caplog.records) == MAX_KINDS + 1
    assert caplog.records[-1].getMessage() == f"refused {MAX_KINDS}"
    caplog.clear()
    now[0] = 10.0  # the interval passed: the kinds are forgotten and log anew, once each
    with caplog.at_level("WARNING", logger="test.throttled.kinds"):
        for n in range(MAX_KINDS * 4):
            throttled.warning("refused %d", n, key=str(n))
    assert len(caplog.records) == MAX_KINDS + 1
