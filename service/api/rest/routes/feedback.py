"""``POST /v1/feedback``: the true class of answered images, by the request id the answer carried.

Labels change what the model is judged and retrained on, so the repository API's rule applies
(bearer token, or ``ADMIN_LOOPBACK``'s local clients) unless ``FEEDBACK_OPEN`` opens it; each
label records whether an admin gave it, since the retrain trusts only theirs by default."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Security
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from service.api.admin import admits
from service.api.client_address import caller
from service.api.rest.dependencies import Plane
from service.api.rest.http_io import read_json_body, validated_body
from service.api.rest.json_wire import loads
from service.api.rest.routes.model_repository import BEARER, refuse_cross_site, require_admin
from service.api.rest.schemas import errors, json_body
from service.core.errors import PayloadTooLarge, UnprocessableInput
from service.core.limits import check_object_size
from service.core.logs import stored_id
from service.dataplane.feedback import MAX_FEEDBACK_ITEMS, Feedback
from service.dataplane.prediction_store import ADMIN, OPEN

router = APIRouter(prefix="/v1", tags=["REST v1"])
EXAMPLE = {"id": "<X-Request-ID of the answer>", "label": "cat"}
MAX_GIVEN_ID_CHARS = 8192  # a v2 or gRPC ``id`` as the client gave it (the log keeps 128)


class FeedbackItem(BaseModel):
    """One label: ``id`` is the answer's X-Request-ID (or the v2/gRPC ``id`` the client gave)."""

    model_config = ConfigDict(extra="forbid")
    # as answered: an id the log stored cut or without NUL is looked up as stored (``stored_id``)
    id: str = Field(min_length=1, max_length=MAX_GIVEN_ID_CHARS)
    label: StrictInt | Annotated[str, Field(min_length=1, max_length=128)]
    item: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Which image of the request (default 0)."
    )


class FeedbackResponse(BaseModel):
    labelled: int


def parse_feedback(data: Any) -> list[Feedback]:
    """One object or a list of them; bounded before any member is looked at."""
    members = data if isinstance(data, list) else [data]
    if len(members) > MAX_FEEDBACK_ITEMS:
        raise PayloadTooLarge(f"{len(members)} labels, more than the limit of {MAX_FEEDBACK_ITEMS}")
    if not members:
        raise UnprocessableInput("no labels given")
    items = []
    for member in members:
        if isinstance(member, dict):
            check_object_size(len(member), "a feedback object")
        body = validated_body(FeedbackItem, member, UnprocessableInput)
        items.append(Feedback(stored_id(body.id), body.label, body.item))
    return items


@router.post(
    "/feedback",
    summary="Label answered images by request id (a class name or index; the last label wins)",
    description="An open label (FEEDBACK_OPEN) never replaces an admin's: another label is a 409.",
    response_model=FeedbackResponse,
    responses=errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
    openapi_extra=json_body(FeedbackItem, EXAMPLE),
)
async def feedback(
    request: Request, plane: Plane, _: Annotated[Any, Security(BEARER)] = None
) -> dict[str, int]:
    by = await labeller(request, plane)
    items = parse_feedback(loads(await read_json_body(request)))
    return {"labelled": await plane.feedback(items, by)}


async def labeller(request: Request, plane: Plane) -> str:
    """ADMIN for a call the admin rule admits, OPEN for anyone else under ``FEEDBACK_OPEN``
    (never a visitor's browser); refused otherwise. A call with a token is held to it (a
    wrong one is a 403, not an open label its sender would take for an admin's)."""
    settings, headers = plane.settings, request.headers
    if settings.feedback_open and not headers.get("authorization"):
        refuse_cross_site(request)
        peer = request.client.host if request.client else None
        who = caller(peer, headers.items(), settings.trusted_proxies)
        if not admits(settings, who, "", headers.get("host")):  # not ADMIN_LOOPBACK's client
            return OPEN
    await require_admin(request, plane)
    return ADMIN
