"""``GET /v1/models/{name}[/versions/{version}]/monitor``: live quality of a version over a window
of the prediction log (docs/monitoring.md, "The monitor"). Read-only and open, like the
statistics; bounded: the window is at most 30 days and answers are shared for a second."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from service.api.rest.dependencies import Plane
from service.api.rest.schemas import errors
from service.dataplane.monitor import MonitorReport
from service.dataplane.quality_monitor import MAX_WINDOW_S

router = APIRouter(prefix="/v1", tags=["Monitoring"])

WindowS = Annotated[
    float | None,
    Query(gt=0, le=MAX_WINDOW_S, description="Seconds back from now (default MONITOR_WINDOW_S)."),
]


class DistributionOut(BaseModel):
    counts: list[int]
    reference: list[float] | None  # the card's fractions; null: the card has no reference
    drift: float | None  # Jensen-Shannon distance (base 2) to the reference


class HistogramOut(DistributionOut):
    bins: int  # equal-width bins over [0, 1]


class DriftOut(BaseModel):
    score: float | None
    threshold: float
    drifting: bool
    noise_floor: float


class ReliabilityOut(BaseModel):
    count: int
    mean_confidence: float
    accuracy: float


class LabelledOut(BaseModel):
    n: int
    correct: int
    accuracy: float | None
    interval: tuple[float, float]
    card_accuracy: float | None
    confusion: list[list[int]]
    ece: float | None
    reliability: list[ReliabilityOut]


class MonitorResponse(BaseModel):
    """What a version predicted in the window, against its card's reference, and how often it
    was right on labelled feedback."""

    model: str
    version: int
    window_s: float
    since: float
    until: float
    predictions: int
    class_names: list[str]
    predicted_classes: DistributionOut
    top1_probability: HistogramOut
    drift: DriftOut
    labelled: LabelledOut
    calibration: dict[str, Any] | None


def monitor_json(report: MonitorReport) -> dict[str, Any]:
    body = dataclasses.asdict(report)
    body["top1_probability"]["bins"] = len(report.top1_probability.counts)
    return body


_MONITOR: dict[str, Any] = {"response_model": MonitorResponse, "responses": errors(404, 422, 503)}


@router.get(
    "/models/{name}/monitor", summary="Live quality of the served version (drift, accuracy)",
    **_MONITOR,
)  # fmt: skip
async def served_monitor(plane: Plane, name: str, window_s: WindowS = None) -> dict[str, Any]:
    return monitor_json(await plane.monitor_report(name, None, window_s))


@router.get(
    "/models/{name}/versions/{version}/monitor", summary="Live quality of a version", **_MONITOR
)
async def version_monitor(
    plane: Plane, name: str, version: str, window_s: WindowS = None
) -> dict[str, Any]:
    return monitor_json(await plane.monitor_report(name, version, window_s))
