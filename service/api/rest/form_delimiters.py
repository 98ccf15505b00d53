"""A multipart form's delimiters checked at C speed before python-multipart walks them.

python-multipart finds delimiters with ``bytes.find`` but walks three things a byte at a time
in Python: the padding RFC 2046 allows after a delimiter (about 185 ms of the event loop a MiB
of spaces), a delimiter followed by anything but padding, a CRLF or ``--``, which it takes back
as data (about 130 ms a MiB of ``\\r\\n--aX``), and the spaces before a header's value (about
160 ms a MiB). RFC 2046 forbids the second, and no client sends the other two at length. So
the stream is checked first, chunk by chunk, with the parser's own notion of where the first
delimiter is and where a part's data starts, and a form that breaks the rule is a 400 before
the parser sees the chunk.
"""

from __future__ import annotations

from enum import Enum, auto

from service.core.errors import InvalidInput

MAX_PADDING = 32  # spaces or tabs allowed after a delimiter (RFC 2046's transport padding)
MAX_HEADER_BLOCK = 64 * 1024  # a part's headers; python-multipart refuses 8 x 4 kB lines anyway
# a header's value may start after at most MAX_PADDING spaces (python-multipart walks them)
SPACED_VALUE = b":" + b" " * (MAX_PADDING + 1)
# A part's parameters (name, filename...): python-multipart's parse_options_header slices the
# rest of a value at every ';', a quadratic walk (1,000 parts of 3.9 kB of ';' each: 2.3 s)
MAX_PART_SEMICOLONS = 32


class _At(Enum):
    START = auto()  # no byte of the first delimiter seen yet: python-multipart's START state
    DATA = auto()  # in a part's data (or the preamble): looking for the next delimiter
    HEADERS_START = auto()  # right after a delimiter's line: an empty header block?
    HEADERS = auto()  # in a part's headers: looking for the blank line that ends them
    CLOSED = auto()  # after the close delimiter: the epilogue, which the parser skips


class FormDelimiters:
    """Feed every chunk of a ``multipart/form-data`` body with ``boundary`` to ``check``
    before the parser gets it; each delimiter must be followed by up to MAX_PADDING spaces or
    tabs and a CRLF (the next part) or by ``--`` (the end). The bytes carried between chunks
    are fewer than a delimiter line, so the check costs one ``find`` a part and a copy a chunk."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._carried = b""
        self._at = _At.START
        self._header_bytes = self._semicolons = 0

    def check(self, chunk: bytes) -> None:
        """InvalidInput at the first delimiter ``chunk`` breaks the rule in; the chunk's last
        bytes are kept to be checked with the next one when they could begin a delimiter."""
        if self._at is _At.CLOSED:
            return
        if self._at is _At.START:
            if chunk[:1] in (b"\r", b"\n"):  # the parser jumps to the chunk's first '-', or
                dash = chunk.find(b"-")  # past its end if it has none
                chunk = chunk[dash:] if dash >= 0 else b""
            if not chunk:
                return
            # The parser's first delimiter begins here: looked for as if after a CRLF.
            self._at, self._carried = _At.DATA, b"\r\n"
        buffer = self._carried + chunk
        at: int | None = 0
        while at is not None:
            at = self._step(buffer, at)

    def _step(self, buffer: bytes, at: int) -> int | None:
        """Check from ``at`` on: where to go on, or None with what is left carried."""
        if self._at is _At.DATA:
            return self._in_data(buffer, at)
        if self._at is _At.HEADERS_START:
            if len(buffer) - at < 2:
                self._carried = buffer[at:]
                return None
            self._at = _At.HEADERS
            self._header_bytes = self._semicolons = 0
            if buffer.startswith(b"\r\n", at):  # no headers: the data starts after the CRLF
                self._at = _At.DATA
                return at + 2
            return at
        if self._at is _At.HEADERS:
            return self._in_headers(buffer, at)
        return None

    def _in_data(self, buffer: bytes, at: int) -> int | None:
        found = buffer.find(self._delimiter, at)
        if found < 0:  # a delimiter may begin in the last bytes
            self._carried = buffer[max(at, len(buffer) - len(self._delimiter) + 1) :]
            return None
        end = found + len(self._delimiter)
        after = buffer[end : end + MAX_PADDING + 2]
        if after.startswith(b"--"):
            self._at = _At.CLOSED
            return None
        rest = after.lstrip(b" \t")
        if rest.startswith(b"\r\n"):
            self._at = _At.HEADERS_START
            return end + len(after) - len(rest) + 2
        complete = len(after) == MAX_PADDING + 2
        if not complete and (after == b"-" or rest in (b"", b"\r")):
            self._carried = buffer[found:]  # undecided until the next chunk
            return None
        raise InvalidInput(
            "malformed multipart form: a delimiter (the boundary) must be followed by a line "
            f"break or '--', with at most {MAX_PADDING} spaces before it; a part's data may "
            "not hold its delimiter"
        )

    def _in_headers(self, buffer: bytes, at: int) -> int | None:
        found = buffer.find(b"\r\n\r\n", at)
        if buffer.find(SPACED_VALUE, at, len(buffer) if found < 0 else found) >= 0:
            raise InvalidInput(
                f"malformed multipart form: a part's header value starts after more than "
                f"{MAX_PADDING} spaces"
            )
        # the blank line, or spaces after a colon, may begin in the last bytes: kept for the next
        self._carried = buffer[max(at, len(buffer) - len(SPACED_VALUE) + 1) :] if found < 0 else b""
        end = found if found >= 0 else len(buffer) - len(self._carried)
        self._header_bytes += end - at
        self._semicolons += buffer.count(b";", at, end)
        if self._header_bytes > MAX_HEADER_BLOCK:
            raise InvalidInput(
                f"malformed multipart form: a part's headers are over {MAX_HEADER_BLOCK} bytes"
            )
        if self._semicolons > MAX_PART_SEMICOLONS:
            raise InvalidInput(
                f"malformed multipart form: a part's headers hold more than {MAX_PART_SEMICOLONS} "
                "';' (parameters)"
            )
        if found < 0:
            return None
        self._at = _At.DATA
        return found + 4
