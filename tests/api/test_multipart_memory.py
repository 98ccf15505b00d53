"""Uploaded files stay in memory within the body limit: Starlette spools parts over 1 MiB to a
temporary file, and a container's /tmp is small and shared (deploy/k8s gives it 64 MiB)."""

from __future__ import annotations

import os

import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from service.api.rest.http_io import multipart_form


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def multipart_request(content: bytes) -> Request:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
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


@pytest.mark.anyio
async def test_a_5_mib_upload_is_kept_in_memory_not_spooled_to_disk() -> None:
    content = os.urandom(5 * 1024 * 1024)
    request = multipart_request(content)
    async with multipart_form(request, 4, "too many", max_bytes=64 * 1024 * 1024) as form:
        (upload,) = [v for v in form.values() if isinstance(v, UploadFile)]
        assert upload.file._rolled is False  # type: ignore[attr-defined]  # still in memory
        assert await upload.read() == content


@pytest.mark.anyio
async def test_past_the_in_memory_bound_starlette_would_spool() -> None:
    """The same upload with a 1 MiB bound rolls over to a file: the check above can fail."""
    request = multipart_request(os.urandom(2 * 1024 * 1024))
    async with multipart_form(request, 4, "too many", max_bytes=1024 * 1024) as form:
        (upload,) = [v for v in form.values() if isinstance(v, UploadFile)]
        assert upload.file._rolled is True  # type: ignore[attr-defined]
