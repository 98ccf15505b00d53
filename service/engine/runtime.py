"""A loaded model: one onnxruntime session with its providers, warm-up and ``run()``.

``session.run`` executes on one dedicated thread per model so the event loop stays free;
onnxruntime releases the GIL and parallelises inside a run (``intra_op_threads``). A runtime that
a newer version replaces is retired: it finishes the requests that hold it, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.card import ModelCard, TensorSpec
from service.core.errors import InvalidCard, ServingError

log = logging.getLogger(__name__)

# Open Inference Protocol datatypes <-> numpy and onnxruntime's type strings.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype(np.uint8),
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "BOOL": np.dtype(np.bool_),
}
ORT_DATATYPES = {
    "tensor(uint8)": "UINT8",
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
}
GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built; the repository passes the same options to every model."""

    providers: tuple[str, ...] = ("CUDAExecutionProvider", CPU)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"
    warm_up: bool = True


def resolve_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the requested providers into (usable, missing); CPU is appended as the last resort."""
    available = set(ort.get_available_providers())
    usable = [p for p in dict.fromkeys(requested) if p in available]
    missing = [p for p in dict.fromkeys(requested) if p not in available]
    if CPU not in usable:
        usable.append(CPU)
    return usable, missing


def graph_tensors(specs: Sequence[Any]) -> list[TensorSpec]:
    """onnxruntime's NodeArg list as card-style specs (symbolic or unknown axes become -1)."""
    tensors = []
    for arg in specs:
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
        tensors.append(TensorSpec(arg.name, ORT_DATATYPES.get(arg.type, arg.type), shape))
    return tensors


class ModelRuntime:
    """One model version held in an onnxruntime session; safe to share across requests."""

    def __init__(self, card: ModelCard, model_bytes: bytes, options: RuntimeOptions) -> None:
        self.card = card
        self.options = options
        sess_options = ort.SessionOptions()
        sess_options.intra_op_num_threads = options.intra_op_threads
        sess_options.inter_op_num_threads = options.inter_op_threads
        sess_options.graph_optimization_level = GRAPH_OPTIMIZATION[options.graph_optimization_level]
        sess_options.log_severity_level = 3  # onnxruntime's own warnings would repeat ours
        providers, _ = resolve_providers(options.providers)
        try:
            self.session = ort.InferenceSession(
                model_bytes, sess_options=sess_options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise InvalidCard(f"onnxruntime cannot load the graph: {exc}") from None
        self.providers: list[str] = list(self.session.get_providers())
        self.inputs = graph_tensors(self.session.get_inputs())
        self.outputs = graph_tensors(self.session.get_outputs())
        self.output_names = [t.name for t in self.outputs]
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ort-{card.name}-{card.version}"
        )
        self._lock = threading.Lock()
        self._users = 0  # requests holding this runtime (see ``acquire``)
        self._retired = False
        self.closed = False

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    @property
    def input(self) -> TensorSpec:
        """The image input: ``[N, H, W, C]`` uint8 pixels."""
        return self.card.inputs[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image, from the card's input shape."""
        _, h, w, c = self.input.shape
        return h, w, c

    def run(
        self, images: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on a batch (blocking); returns every requested output by name."""
        names = list(outputs) if outputs else self.output_names
        try:
            results = self.session.run(names, {self.input.name: images})
        except Exception as exc:
            log.exception("%s v%d: onnxruntime failed on a batch", self.name, self.version)
            raise ServingError(f"inference failed for model {self.name!r}") from exc
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}

    async def infer(
        self, images: np.ndarray, outputs: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """Run a batch on the model's own thread; returns the outputs and the seconds spent.

        The seam for a dynamic batcher: callers hand over one validated array and await rows.
        """
        loop = asyncio.get_running_loop()

        def timed() -> tuple[dict[str, np.ndarray], float]:
            start = time.perf_counter()
            result = self.run(images, outputs)
            return result, time.perf_counter() - start

        return await loop.run_in_executor(self._executor, timed)

    def warm_up(self) -> None:
        """One batch of zeros, so the first request does not pay for lazy initialisation."""
        spec = self.input
        shape = [1 if d == -1 else d for d in spec.shape]
        self.run(np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype]))

    def acquire(self) -> bool:
        """A request starts using this runtime: open until the matching ``release``.

        False once retired: the caller looks the model up again and gets its successor.
        """
        with self._lock:
            if self._retired:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            drained = self._retired and self._users == 0
        if drained:
            self.close()

    def retire(self) -> None:
        """No new requests will get this runtime: close it once the last holder releases it."""
        with self._lock:
            self._retired = True
            drained = self._users == 0
        if drained:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        # Every holder has released it, so the thread is idle and the join is immediate.
        self._executor.shutdown(wait=True)
        log.debug("%s v%d closed", self.name, self.version)
