"""Uploaded files stay in memory within the body limit: Starlette spools parts over 1 MiB to a
temporary file, and a container's /tmp is small and shared (deploy/k8s gives it 64 MiB). A form
of many parts is parsed on the work pool: 1,024 parts held the loop 16-23 ms (the seventh
audit)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.types import Message

from service.api.rest import http_io
from service.api.rest.http_io import INLINE_FORM_PARTS, multipart_form
from service.core.errors import InvalidInput, PayloadTooLarge
from service.engine.work_pool import WorkPool


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def multipart_request(*contents: bytes) -> Request:
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()
    body = (
        b"".join(part + content + b"\r\n" for content in contents) + f"--{boundary}--\r\n".encode()
    )
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    return Request(scope, receive)


@pytest.fixture
def work() -> Iterator[WorkPool]:
    pool = WorkPool(threads=1, max_waiting=0)
    yield pool
    pool.close()


@pytest.mark.anyio
async def test_a_5_mib_upload_is_kept_in_memory_not_spooled_to_disk(work: WorkPool) -> None:
    content = os.urandom(5 * 1024 * 1024)
    request = multipart_request(content)
    async with multipart_form(request, work, 4, "too many", max_bytes=64 * 1024 * 1024) as form:
        (upload,) = [v for v in form.values() if isinstance(v, UploadFile)]
        assert upload.file._rolled is False  # type: ignore[attr-defined]  # still in memory
        assert await upload.read() == content


@pytest.mark.anyio
async def test_past_the_in_memory_bound_starlette_would_spool(work: WorkPool) -> None:
    """The same upload with a 1 MiB bound rolls over to a file: the check above can fail."""
    request = multipart_request(os.urandom(2 * 1024 * 1024))
    async with multipart_form(request, work, 4, "too many", max_bytes=1024 * 1024) as form:
        (upload,) = [v for v in form.values() if isinstance(v, UploadFile)]
        assert upload.file._rolled is True  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_form_of_many_parts_is_parsed_on_the_pool_and_reads_the_same(
    work: WorkPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[bool] = []
    parse = http_io._parse_form

    async def recorded(*args: Any) -> FormData:
        where.append(threading.current_thread() is threading.main_thread())
        return await parse(*args)

    monkeypatch.setattr(http_io, "_parse_form", recorded)
    read: list[list[bytes]] = []
    for parts in (INLINE_FORM_PARTS, INLINE_FORM_PARTS + 1, 1024):
        contents = [bytes([i % 256]) * (i % 7) for i in range(parts)]
        async with multipart_form(multipart_request(*contents), work, 1024, "", 1 << 20) as form:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            read.append([await upload.read() for upload in files])
        assert read[-1] == contents
    assert where == [True, False, False]


@pytest.mark.anyio
async def test_too_many_files_on_the_pool_is_a_413_and_a_broken_form_a_400(
    work: WorkPool,
) -> None:
    request = multipart_request(*[b"x"] * 100)
    with pytest.raises(PayloadTooLarge, match="too many"):
        async with multipart_form(request, work, 64, "too many", 1 << 20):
            pass
    request = multipart_request(*[b"x"] * 100)
    request.scope["headers"] = [(b"content-type", b"multipart/form-data; boundary=other")]
    with pytest.raises(InvalidInput, match="malformed multipart form"):
        async with multipart_form(request, work, 1024, "too many", 1 << 20):
            pass
