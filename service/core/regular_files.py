"""The model repository's files read without blocking and within a size. A FIFO put in the
place of ``card.json``, ``config.json`` or ``model.onnx`` blocked the thread opening it until
some process wrote to it, which none did: the repository poll, every repository call waiting on
it, a restarted worker's start and shutdown with it (the eleventh audit). ``config.pbtxt`` and
label files are read the same way (``engine.triton_config``)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_JSON_BYTES = 1024 * 1024  # a card or config.json is a few kB; 40 MB of one held the loop 1.2 s
# protobuf's bound on one message: a larger model.onnx keeps its weights in external data files
MAX_MODEL_BYTES = 2**31 - 1


class NotRegular(OSError):
    """A FIFO, a device or a folder where a file was expected."""


class TooLarge(OSError):
    """A file over the size its reader takes."""


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; an ``OSError``
    whose ``strerror`` says why not (``FileNotFoundError`` where there is none)."""
    return read_regular_stat(path, limit)[0]


def read_regular_stat(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """``read_regular``, and the file's stat as opened (a change check's signature)."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:  # no wait for a writer
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise TooLarge(errno.EFBIG, f"{st.st_size} bytes, over the limit of {limit}")
        # What fstat gave and a byte more, then (grown since) the rest a MiB at a time: a read
        # of ``limit`` bytes would reserve them first (a terabyte, for external weights).
        chunks, total, want = [], 0, st.st_size + 1
        while chunk := fh.read(min(want, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grown since
                raise TooLarge(errno.EFBIG, f"over the limit of {limit} bytes")
            want = 1 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), st
