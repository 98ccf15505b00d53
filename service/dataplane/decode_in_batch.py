"""Under load a small plain JSON infer body is decoded on its model's thread, just before its
run, one body after another with the rest of its batch, instead of on the event loop as it comes.

On one core the loop and the model's thread share the CPU, and a body decoded between other
requests' reads, replies and runs finds the caches cold: the raw batched app
(``bench/ceiling_batched.py``) answered 15 % more requests a second at 64 clients with its
decode moved into the batch, and the loop, sooner done with each request, has every waiting one
queued before a run starts, so fewer runs are split (docs/benchmarks.md, "Decoding in the
batch"). So where a worker has one core (``DECODE_IN_BATCH=auto``; with two, decoding on the
loop overlaps the model's run, and moving it cost 6 %), and only while the model's thread is
busy: an idle one runs a lone request at once (or inline), decoded on the loop as before. Only
where nothing needs the decoded request before its run (no tracing, no response cache) and no
``REQUEST_TIMEOUT_US`` can answer a body queued past it before it is read; a body
that turns out to need more (shared memory, classification, its own timeout, another version)
is handed back ``Undecided`` with its decode and goes on as any request does, so every check
and error is the usual path's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.core.card import TENSOR
from service.core.logs import REQUEST_ID
from service.dataplane.dataplane import DataPlane
from service.dataplane.pixels import model_pixels
from service.dataplane.prediction_log import logged_id
from service.dataplane.types import InferRequest, InferResponse
from service.engine import tracing
from service.engine.batcher import DynamicBatcher
from service.engine.runtime import ModelRuntime, chosen_outputs
from service.engine.work_pool import TooHeavyForTheLoop


class Undecided(Exception):
    """Not a request its batch answers by itself: the caller goes on with ``request`` (its
    decode; None: decode it as usual)."""

    def __init__(self, request: InferRequest | None) -> None:
        super().__init__("decoded on the usual path")
        self.request = request


def batch_decoding(plane: DataPlane, model: ModelRuntime) -> DynamicBatcher | None:
    """The batcher that would decode a request's body itself: ``model``'s, while busy, where
    nothing needs the decoded request before its run."""
    if not plane.decodes_in_batch or model.kind == TENSOR or tracing.TRACER is not None:
        return None
    if plane.response_cache.enabled(model.name) or plane.settings.request_timeout_us:
        return None  # a queued request past its time is answered so: a bad body must hear why
    return model.busy_batcher()


async def infer_in_batch(
    plane: DataPlane,
    model: ModelRuntime,
    batcher: DynamicBatcher,
    decode: Callable[[], InferRequest],
) -> tuple[InferRequest, InferResponse]:
    """The request ``decode`` makes (on the model's thread) and its answer from ``model``;
    ``Undecided`` where it needs the usual path, any error of its decode or pixels as is."""
    decoded: list[InferRequest] = []
    logged = plane.prediction_log is not None
    request_id = REQUEST_ID.get()  # the loop's context: the thread has none

    def make() -> tuple[np.ndarray, str | None]:
        try:
            request = decode()
        except TooHeavyForTheLoop:
            raise Undecided(None) from None
        if request.names_shared_memory or request.class_counts or request.timeout_us:
            raise Undecided(request)
        pixels = model_pixels(model, request.inputs, [o.name for o in request.outputs])
        if len(pixels) > model.options.max_images_per_request:
            raise Undecided(request)  # the usual path says so
        decoded.append(request)
        return pixels, logged_id(request.id or request_id) if logged else None

    outputs = await batcher.submit(None, make=make)  # no REQUEST_TIMEOUT_US here (above)
    (request,) = decoded
    chosen = chosen_outputs(outputs, [o.name for o in request.outputs])
    return request, InferResponse(model.name, str(model.version), request.id, chosen)
