"""The prediction log's rows, made from queued answers on its writer thread: the top-1 of each
image, its request id as every store takes it, its captured pixels compressed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.core.captured_images import pack
from service.core.logs import stored_id
from service.dataplane import prediction_store as store
from service.engine.batcher import Tagged

CAPTURED_SHAPE = (32, 32, 3)
# A run's answers (a request's own where it ran alone or came from the response cache): its
# requests as (request id, first row, end row) in its outputs, model, version, Unix time, every
# output of the run, each request's pixels where captured, the image count of its requests,
# and the bytes of those arrays (counted against ``MAX_PENDING_BYTES`` while it is queued)
Answer = tuple[
    Tagged, str, int, float, Mapping[str, np.ndarray], list[np.ndarray | None] | None, int, int
]


def top1(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(class index, probability) per image from ``probabilities``, else softmax of ``logits``
    (only the top term is computed); None when neither output was asked."""
    scores = _scores(outputs)
    if scores is None:
        return None
    kind, array = scores
    if kind == "probabilities":
        return array.argmax(axis=1), array.max(axis=1).astype(np.float64)
    logits = array.astype(np.float64)
    best = logits.max(axis=1, keepdims=True)
    return logits.argmax(axis=1), 1.0 / np.exp(logits - best).sum(axis=1)


def _scores(outputs: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    """The output the top-1 is read from: (its name, a (images, classes) array), or None."""
    for name in ("probabilities", "logits"):
        array = outputs.get(name)
        if array is not None and array.ndim == 2 and array.shape[1] > 0:
            return name, array
    return None


def make_rows(answers: Sequence[Answer]) -> list[store.Row]:
    """One row per image of every answer (``store.COLUMNS``' order). The top-1 is computed once
    per output kind and class count over the whole batch, not per answer: the writer's Python
    time holds the GIL the request path needs."""
    groups: dict[tuple[str, int], list[tuple[Answer, np.ndarray]]] = {}
    for answer in answers:
        scores = _scores(answer[4])
        if scores is not None:
            groups.setdefault((scores[0], scores[1].shape[1]), []).append((answer, scores[1]))
    rows: list[store.Row] = []
    for (kind, _), members in groups.items():
        best = top1({kind: np.concatenate([array for _, array in members])})
        assert best is not None
        classes, probabilities = best[0].tolist(), best[1].tolist()
        base = 0  # where this answer's run starts in the concatenated arrays
        for (tagged, model, version, now, _, captured, _, _), array in members:
            for n, (request_id, start, end) in enumerate(tagged):
                request_id = stored_id(request_id)
                pixels = captured[n] if captured is not None else None
                kept = pixels is not None and pixels.shape == (end - start, *CAPTURED_SHAPE)
                for item, at in enumerate(range(base + start, base + end)):
                    image = pack(pixels[item].tobytes()) if kept else None  # type: ignore[index]
                    rows.append(
                        (request_id, item, model, version, now, classes[at], probabilities[at],
                         image)
                    )  # fmt: skip
            base += len(array)
    return rows
