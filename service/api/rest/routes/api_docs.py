"""The interactive API documentation at ``/docs``: Swagger UI served from the swagger-ui-bundle
package, so the page works offline and loads no script from a third-party CDN onto the API's
origin (FastAPI's default page does)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from service.api.rest.json_wire import dumps

router = APIRouter(include_in_schema=False)

ASSETS = "/docs/assets"
OPENAPI_URL = "/openapi.json"  # served here, not by FastAPI (``openapi_url=None``)
ASSET_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


# Its "Try it out" sends same-origin calls, which ADMIN_LOOPBACK admits: no other site may frame
# it and click them (the explorer page's rule; the page's inline script rules out the rest of
# that page's policy).
FRAMING = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )
    page.headers.update(FRAMING)
    return page


@router.get(OPENAPI_URL)
async def openapi_document(request: Request) -> Response:
    """The OpenAPI document, encoded once: FastAPI's own route encodes its 72 kB anew for every
    request (1.2 ms of the loop for a 47-byte GET)."""
    app = request.app
    if getattr(app.state, "openapi_bytes", None) is None:
        app.state.openapi_bytes = dumps(app.openapi())
    return Response(app.state.openapi_bytes, media_type="application/json")


@router.get(ASSETS + "/{name}")
async def swagger_asset(request: Request, name: str) -> Response:
    media_type = ASSET_FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no documentation asset {name!r}")
    content, etag = _asset(name)
    headers = {"Cache-Control": "max-age=86400", "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):  # a browser revalidating its copy
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and entity tag, read once: a ``FileResponse`` answers ``Range`` headers,
    and 100 one-byte ranges (a 695-byte request) cost 12 ms of CPU, a seek and a read on a
    thread each."""
    content = (Path(swagger_ui_path) / name).read_bytes()
    return content, f'"{hashlib.sha256(content).hexdigest()[:32]}"'
