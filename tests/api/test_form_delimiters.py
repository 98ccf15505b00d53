"""FormDelimiters: every well-formed form passes, chunked anyhow, and python-multipart then
parses the same parts; padding past MAX_PADDING, a part's data holding its delimiter, or
endless headers are refused in the chunk that shows them, before the parser walks them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser
from starlette.requests import Request
from starlette.types import Message

from service.api.rest.form_delimiters import (
    MAX_HEADER_BLOCK,
    MAX_PADDING,
    SPACED_VALUE,
    FormDelimiters,
)
from service.api.rest.http_io import multipart_form
from service.core.errors import InvalidInput

# RFC 2046's boundary characters (no space, which may not end one)
BOUNDARY_CHARS = "0123456789abcXYZ'()+_,-./:=?"
HEAD = b'Content-Disposition: form-data; name="f"; filename="x.png"\r\n\r\n'


def form(boundary: bytes, parts: list[bytes], padding: bytes = b"", epilogue: bytes = b"") -> bytes:
    """python-multipart allows no padding after the first delimiter, RFC 2046 does."""
    lines = [b"--" + boundary + (padding if i else b"") + b"\r\n" for i in range(len(parts))]
    body = b"".join(line + HEAD + p + b"\r\n" for line, p in zip(lines, parts, strict=True))
    return body + b"--" + boundary + b"--\r\n" + epilogue


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


def check_all(boundary: bytes, chunks: list[bytes]) -> None:
    delimiters = FormDelimiters(boundary)
    for chunk in chunks:
        delimiters.check(chunk)


def parsed(boundary: bytes, chunks: list[bytes]) -> list[bytes]:
    """The parts' data as python-multipart reads them."""
    parts: list[bytes] = []
    callbacks = {
        "on_part_begin": lambda: parts.append(b""),
        "on_part_data": lambda data, start, end: parts.append(parts.pop() + data[start:end]),
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    for chunk in chunks:
        parser.write(chunk)
    return parts


@settings(max_examples=300, deadline=None)
@given(
    boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=70).map(str.encode),
    parts=st.lists(st.binary(max_size=60), max_size=5),
    padding=st.text(" \t", max_size=MAX_PADDING).map(str.encode),
    epilogue=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 600), max_size=12),
)
def test_every_well_formed_form_passes_however_it_is_chunked(
    boundary: bytes, parts: list[bytes], padding: bytes, epilogue: bytes, cuts: list[int]
) -> None:
    delimiter = b"\r\n--" + boundary
    # a part's data may not hold its delimiter, nor end in what would complete one
    parts = [p for p in parts if (p + delimiter).find(delimiter) == len(p)]
    chunks = chunked(form(boundary, parts, padding, epilogue), cuts)
    check_all(boundary, chunks)
    assert parsed(boundary, chunks) == parts


HOSTILE = {
    "data holding its delimiter": b"\r\n--aX",
    "padding": b"\r\n--a" + b" " * (MAX_PADDING + 1) + b"\r\n",
}


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(HOSTILE)),
    parts=st.lists(st.binary(max_size=40).filter(lambda p: b"\r\n--a" not in p), min_size=1),
    where=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 400), min_size=1, max_size=2),
)
def test_a_hostile_delimiter_anywhere_is_refused_however_it_is_chunked(
    kind: str, parts: list[bytes], where: int, cuts: list[int]
) -> None:
    """Refusal, not only acceptance: a check that carried nothing from one chunk to the next
    would pass every well-formed form and miss a delimiter split between two chunks."""
    i = where % len(parts)
    part = parts[i]
    parts[i] = part[: where % (len(part) + 1)] + HOSTILE[kind] + part[where % (len(part) + 1) :]
    body = form(b"a", parts)
    with pytest.raises(InvalidInput):
        check_all(b"a", chunked(body, cuts))


@pytest.mark.parametrize("lead", [b"\n", b"\r", b"\r\n", b"\r\njunk", b"\r\n\r\n"])
def test_the_first_delimiter_is_where_python_multipart_finds_it(lead: bytes) -> None:
    """A body starting with CR or LF makes the parser jump to its first '-': the check finds
    the first delimiter there too, not at the first CRLF--boundary (which was a header named
    '--a--' here, taken for the close delimiter: nothing after it was checked)."""
    head = lead + b"--a\r\n--a--: x\r\n" + HEAD + b"x\r\n--a"
    with pytest.raises(InvalidInput, match="delimiter"):
        check_all(b"a", [head + b" " * 64])
    with pytest.raises(InvalidInput, match="delimiter"):
        check_all(b"a", [lead, head[len(lead) :] + b"X\r\n--a"])


def test_spaces_before_a_header_value_are_bounded_split_anywhere() -> None:
    part = b"--a\r\nContent-Disposition:" + b" " * 4000 + b'form-data; name="f"\r\n\r\nx'
    for at in range(0, len(part), 97):
        with pytest.raises(InvalidInput, match="spaces"):
            check_all(b"a", [part[:at], part[at:]])
    assert len(SPACED_VALUE) == MAX_PADDING + 2
    check_all(b"a", [form(b"a", [b"x"]).replace(b"Disposition: ", b"Disposition:" + b" " * 32)])


@pytest.mark.parametrize("at", range(1, 40))
def test_data_holding_its_delimiter_is_refused_wherever_the_chunk_ends(at: int) -> None:
    body = form(b"a", [b"x\r\n--aX" * 4])
    with pytest.raises(InvalidInput, match="may not hold its delimiter"):
        check_all(b"a", [body[:at], body[at:]])
    assert parsed(b"a", [body]) == [b"x\r\n--aX" * 4]  # where python-multipart takes it as data


@pytest.mark.parametrize("pad", [MAX_PADDING + 1, 1 << 20])
def test_padding_past_the_bound_is_refused_in_its_first_chunk(pad: int) -> None:
    body = b"--a\r\n" + HEAD + b"y\r\n--a" + b" " * pad + b"\r\n" + HEAD + b"--a--\r\n"
    delimiters = FormDelimiters(b"a")
    with pytest.raises(InvalidInput, match=f"at most {MAX_PADDING} spaces"):
        delimiters.check(body[:65536])


def test_padding_within_the_bound_passes_split_anywhere() -> None:
    body = form(b"a", [b"one", b"two"], b" \t" * (MAX_PADDING // 2))
    for at in range(len(body)):
        check_all(b"a", [body[:at], body[at:]])


def test_endless_headers_are_refused() -> None:
    delimiters = FormDelimiters(b"a")
    delimiters.check(b"--a\r\nX-Long: ")
    with pytest.raises(InvalidInput, match="headers are over"):
        for _ in range(MAX_HEADER_BLOCK // 1000 + 1):
            delimiters.check(b"y" * 1000)


def test_a_part_that_starts_like_a_close_delimiter_is_still_checked() -> None:
    """After a part's headers its data begins; a delimiter there is a delimiter, not the end
    (python-multipart starts the data after the blank line, and so does the check)."""
    body = b"--a\r\n" + HEAD + b"--a--" + b"\r\n--aX" * 3
    with pytest.raises(InvalidInput):
        check_all(b"a", [body])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request_of(body: bytes, boundary: str = "a") -> Request:
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


@pytest.mark.anyio
async def test_multipart_form_refuses_a_padded_form_as_a_400() -> None:
    body = b"--a\r\n" + HEAD + b"y\r\n--a" + b" " * (4 << 20)
    with pytest.raises(InvalidInput) as refused:
        async with multipart_form(request_of(body), 4, "too many", max_bytes=64 << 20):
            pass
    assert refused.value.status == 400


@pytest.mark.anyio
async def test_an_empty_boundary_is_checked_too() -> None:
    """``boundary=""`` is python-multipart's delimiter CRLF + '--': checked like any other."""
    body = b"--\r\n" + HEAD + b"y\r\n--" + b" " * (1 << 20)
    with pytest.raises(InvalidInput, match="delimiter"):
        async with multipart_form(request_of(body, '""'), 4, "too many", max_bytes=64 << 20):
            pass


@pytest.mark.anyio
async def test_multipart_form_still_reads_an_ordinary_form() -> None:
    async with multipart_form(request_of(form(b"a", [b"png"])), 4, "x", 1 << 20) as parts:
        assert [await f.read() for f in parts.values()] == [b"png"]  # type: ignore[union-attr]


def test_a_parts_parameters_are_bounded_split_anywhere() -> None:
    """python-multipart's parse_options_header slices a value at every ';': 1,000 parts of
    3.9 kB of them cost 2.3 s of the loop."""
    part = b'--a\r\nContent-Disposition: form-data; name="f"' + b";" * 3900 + b"\r\n\r\nx"
    for at in range(0, len(part), 101):
        with pytest.raises(InvalidInput, match="more than 32 ';'"):
            check_all(b"a", [part[:at], part[at:]])
    fine = b'--a\r\nContent-Disposition: form-data; name="f"' + b";" * 30 + b"\r\n\r\nx"
    check_all(b"a", [fine + b"\r\n--a--\r\n"])


@pytest.mark.anyio
async def test_a_content_type_of_many_parameters_is_refused_before_it_is_parsed() -> None:
    """Parsed twice (here and by Starlette), 60,000 ';' cost 71 ms of the loop a request."""
    body = form(b"a", [b"png"])
    with pytest.raises(InvalidInput, match="Content-Type"):
        async with multipart_form(request_of(body, "a" + ";" * 60_000), 4, "x", 1 << 20):
            pass
    async with multipart_form(request_of(body, "a; charset=utf-8"), 4, "x", 1 << 20) as parts:
        assert len(parts) == 1
