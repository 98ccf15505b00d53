"""Feature maps: the served graph's intermediate tensors, read through a separate session.

The classification session is never touched. On first use an inspection session is built from the
same ONNX bytes (checked against the card's sha256) with every layer's output tensor added as a
graph output; it runs one image at a time on one onnxruntime thread.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference

from service.core.card import MODEL_FILE, ModelCard
from service.core.errors import InvalidCard, ServingError, UnprocessableInput
from service.core.layer_specs import Shape
from service.core.regular_files import MAX_MODEL_BYTES, read_regular
from service.engine.external_data import locations_in, read_external
from service.engine.large_graphs import in_child, is_large, onnxruntime_session
from service.engine.layers import LayerReport
from service.engine.providers import resolve_providers
from service.engine.runtime import GRAPH_OPTIMIZATION, RuntimeOptions
from service.engine.served_graph import read_model_again
from service.engine.work_pool import WorkPool

T = TypeVar("T")
EXPLORER_WAITING = 8  # feature-map requests waiting their turn; past them a 503
SPATIAL_TYPES = ("conv2d", "max_pool", "avg_pool")  # the layers with feature maps by default


@dataclass(frozen=True)
class LayerOutput:
    """One layer of the table and the graph tensor that holds its output."""

    name: str
    type: str
    tensor: str
    shape: Shape  # (H, W, C) or (n,), as in the layer table


@dataclass(frozen=True)
class Activation:
    """A layer's output for one image, laid out as the layer table reports it: (H, W, C) or (n,)."""

    layer: LayerOutput
    values: np.ndarray


Render = Callable[[list[Activation]], T]  # feature maps made into an answer (on the pool)


def _to_table_layout(array: np.ndarray) -> np.ndarray:
    """One image's tensor without the batch axis; NCHW feature maps become (H, W, C)."""
    single = array[0]
    return np.ascontiguousarray(single.transpose(1, 2, 0)) if single.ndim == 3 else single


def layer_outputs(model_bytes: bytes, tensors: Sequence[str]) -> tuple[bytes, tuple[str, ...]]:
    """The graph outputs ``tensors`` add (typed where shape inference knows them) as a model of
    nothing else, serialized, and the external data files the graph names. Appended to the
    graph's own bytes, protobuf merges that model into them (a message field given twice is
    merged, a repeated one appended), so the graph, however large, is never serialized again."""
    model = shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    graph = model.graph
    typed = {v.name: v for v in [*graph.value_info, *graph.output]}
    present = {o.name for o in graph.output}
    added = []
    for tensor in tensors:
        if tensor not in present:
            # A name alone is enough for onnxruntime; the inferred type is kept where known.
            added.append(typed.get(tensor, onnx.ValueInfoProto(name=tensor)))
            present.add(tensor)
    serialized: bytes = onnx.ModelProto(graph=onnx.GraphProto(output=added)).SerializeToString()
    return serialized, locations_in(model)


def layer_outputs_of_file(
    folder: Path, digest: str, tensors: list[str]
) -> tuple[bytes, tuple[str, ...]]:
    """``layer_outputs`` of a large graph, in a child process (``large_graphs``): its file read
    again, and refused unless it holds the bytes the server checked."""
    model_bytes = read_model_again(folder, digest, "on disk while its feature maps were prepared")
    return layer_outputs(model_bytes, tensors)


class ActivationSession:
    """An onnxruntime session over the served graph that also outputs every layer's tensor."""

    def __init__(
        self,
        card: ModelCard,
        model_bytes: bytes,
        report: LayerReport,
        options: RuntimeOptions,
        folder: Path,
    ) -> None:
        if report.table is None:
            raise InvalidCard(report.error or "no layer table for this model")
        if len(report.outputs) != len(report.table.rows):
            raise InvalidCard("the layer table does not name the graph tensors of its layers")
        self.card = card
        self.layers = [
            LayerOutput(row.name, row.type, tensor, row.output_shape)
            for row, tensor in zip(report.table.rows, report.outputs, strict=True)
        ]
        self._by_name = {layer.name: layer for layer in self.layers}
        sess_options = ort.SessionOptions()
        sess_options.intra_op_num_threads = 1  # never compete with the classification session
        sess_options.inter_op_num_threads = 1
        sess_options.graph_optimization_level = GRAPH_OPTIMIZATION[options.graph_optimization_level]
        sess_options.log_severity_level = 3
        providers, _ = resolve_providers(options.providers)
        tensors = [layer.tensor for layer in self.layers]
        if is_large(model_bytes):  # onnx's parse would hold the GIL (``large_graphs``)
            digest = card.sha256.lower()  # that of ``model_bytes``: ``ActivationSessions.get``
            scheduling = options.thread_scheduling
            added, names = in_child(scheduling, layer_outputs_of_file, folder, digest, tensors)
        else:
            added, names = layer_outputs(model_bytes, tensors)
        self._external = read_external(folder, names)  # kept for the session's life
        try:
            self.session = onnxruntime_session(
                model_bytes, sess_options, providers, added, folder, self._external
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            message = f"onnxruntime cannot expose the graph's layer outputs: {exc}"
            raise InvalidCard(message) from None
        self.input_name = card.inputs[0].name

    def layer(self, name: str) -> LayerOutput:
        found = self._by_name.get(name)
        if found is None:
            known = ", ".join(self._by_name)
            raise UnprocessableInput(
                f"model {self.card.name!r} has no layer {name!r}; layers: {known}"
            )
        return found

    def select(self, names: Sequence[str] | None) -> list[LayerOutput]:
        """The named layers, or every convolution and pooling layer when ``names`` is empty."""
        if not names:
            return [layer for layer in self.layers if layer.type in SPATIAL_TYPES]
        return [self.layer(name) for name in dict.fromkeys(names)]

    def run(self, image: np.ndarray, layers: Sequence[LayerOutput]) -> list[Activation]:
        """Run one ``(H, W, C)`` uint8 image (blocking) and return the layers' outputs."""
        tensors = list(dict.fromkeys(layer.tensor for layer in layers))
        try:
            results = self.session.run(tensors, {self.input_name: image[np.newaxis]})
        except Exception as exc:
            raise ServingError(f"inference failed for model {self.card.name!r}") from exc
        by_tensor = {
            t: _to_table_layout(np.asarray(r)) for t, r in zip(tensors, results, strict=True)
        }
        activations = []
        for layer in layers:
            values = by_tensor[layer.tensor]
            if tuple(values.shape) != layer.shape:
                raise ServingError(
                    f"layer {layer.name}: the graph produced {list(values.shape)}, "
                    f"the layer table says {list(layer.shape)}"
                )
            activations.append(Activation(layer, values))
        return activations


class ActivationSessions:
    """One lazily built inspection session per model name, for the version currently served."""

    def __init__(self, options: RuntimeOptions, work: WorkPool) -> None:
        self.options, self.work = options, work
        # One feature-map job (a run of every layer and its grid) on the pool at once, a few
        # more waiting: a flood of these 600-byte requests leaves the pool to the others.
        self.lane = work.lane(1, EXPLORER_WAITING, "the feature-map explorer is busy; retry")
        self._sessions: dict[str, tuple[tuple[int, str], ActivationSession]] = {}
        self._lock = threading.Lock()

    def get(self, card: ModelCard, folder: Path, report: LayerReport | None) -> ActivationSession:
        """The session for this card's graph, built on first use (blocking: call off the loop)."""
        key = (card.version, card.sha256.lower())
        with self._lock:
            cached = self._sessions.get(card.name)
            if cached is not None and cached[0] == key:
                return cached[1]
            if report is None:
                raise InvalidCard(f"model {card.name!r} has no layer table")
            try:
                model_bytes = read_regular(folder / MODEL_FILE, MAX_MODEL_BYTES)
            except OSError as exc:
                raise InvalidCard(f"cannot read {MODEL_FILE}: {exc.strerror}") from None
            if hashlib.sha256(model_bytes).hexdigest() != key[1]:
                raise InvalidCard(
                    f"{MODEL_FILE} of {card.name!r} v{card.version} changed on disk since it was "
                    f"loaded; feature maps need the graph that is served"
                )
            session = ActivationSession(card, model_bytes, report, self.options, folder)
            self._sessions[card.name] = (key, session)  # replaces an older version's session
            return session

    async def feature_maps(
        self,
        card: ModelCard,
        folder: Path,
        report: LayerReport | None,
        image: np.ndarray,
        names: Sequence[str],
        render: Render[T],
    ) -> T:
        """``names``' feature maps for one image (none: every spatial layer), as ``render`` makes
        them: the session's run and ``render`` in one job of the lane."""
        session = await self.work.run(self.get, card, folder, report)
        chosen = session.select(names)
        return await self.lane.run(lambda: render(session.run(image, chosen)))

    def close(self) -> None:
        """Drop every session (their onnxruntime sessions go with them); later calls rebuild."""
        with self._lock:
            self._sessions.clear()
