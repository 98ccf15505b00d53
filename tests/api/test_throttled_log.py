"""Warnings any client can cause are logged once an interval, with how many came meanwhile."""

from __future__ import annotations

import logging
import time

import pytest

from service.api.rest.throttled_log import ThrottledLog


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
