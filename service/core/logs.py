"""Log records that carry the request id, as text or JSON lines (``LOG_FORMAT``).

The id of the request being served lives in ``REQUEST_ID`` (a context variable, so each request's
task sees its own); ``configure_logging`` puts it on every record. Request bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
MAX_ID_LENGTH = 128


def stored_id(request_id: str) -> str:
    """An id as the prediction log stores it, and feedback looks it up: a v2/gRPC ``id`` may be
    longer than the column or hold NUL, which PostgreSQL refuses (and would take the whole batch
    down with it)."""
    if len(request_id) > MAX_ID_LENGTH or "\x00" in request_id:
        return request_id.replace("\x00", "")[:MAX_ID_LENGTH]
    return request_id


def new_request_id() -> str:
    """96 random bits (0.4 us; uuid4 costs several): unique across restarts and workers, and
    not guessable from one's own answers, since the id is what feedback labels a record by (a
    process prefix and a counter made another client's id one's own minus one)."""
    return os.urandom(12).hex()


def usable_request_id(value: bytes) -> str | None:
    """A client's ``X-Request-ID`` if it is short printable ASCII without spaces, else None (so a
    header cannot forge log lines or carry a payload)."""
    if not 0 < len(value) <= MAX_ID_LENGTH or not value.isascii():
        return None
    text = value.decode("ascii")
    return text if text.isprintable() and " " not in text and '"' not in text else None


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (``-`` outside a request) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """The root logger (uvicorn's loggers propagate to it): ``text`` or ``json`` lines on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime  # the Z in the timestamps
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
