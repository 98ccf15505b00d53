"""Temperature scaling (Guo et al. 2017) inside the exported graph: one temperature T fitted on
held-out training images, then ``probabilities = Softmax(logits / T)`` with ``logits`` unchanged.

A 1-D fit (the NLL over log T, torch's LBFGS), a 2-node graph edit with ``onnx.helper`` (a ``Div``
by an initializer before the ``Softmax``), and a check in onnxruntime that the edit did only that.
Works on any graph whose ``probabilities`` output is a ``Softmax`` of its ``logits`` output: the
float exports and their INT8 (QDQ) copies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from service.core.errors import ExportError
from training.evaluation import INPUT_NAME, OUTPUT_NAMES

TEMPERATURE = "temperature"  # the initializer holding T
SCALED_LOGITS = "logits_over_temperature"  # Div's output, Softmax's input
PROBABILITY_TOLERANCE = 1e-6  # the graph's probabilities against numpy's softmax(logits / T)
# The range T is kept in: a model no better than chance (a smoke-test run) pulls T towards
# infinity, where every answer is uniform; the bound keeps such a fit finite and visible.
MIN_LOG_T, MAX_LOG_T = math.log(0.05), math.log(20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    scaled = torch.from_numpy(logits.astype(np.float64)) / temperature
    return float(F.cross_entropy(scaled, torch.from_numpy(labels)).item())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of ``labels`` (held-out images, never the test split).

    Optimised over log T, so T stays positive; float64, so the optimum does not depend on the
    batch's rounding. NLL in T is smooth and has one minimum for a model that is better than
    chance, which LBFGS finds in a few steps.
    """
    if len(labels) == 0:
        raise ExportError("temperature scaling needs held-out images; none were given")
    x = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.item())
    if not math.isfinite(value):
        raise ExportError("the temperature fit diverged (non-finite loss on the held-out images)")
    return math.exp(min(MAX_LOG_T, max(MIN_LOG_T, value)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) in float64: the reference the graph's probabilities are checked
    against."""
    scaled = logits.astype(np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def _softmax_head(graph: onnx.GraphProto) -> tuple[int, onnx.NodeProto]:
    logits, probabilities = OUTPUT_NAMES
    for index, node in enumerate(graph.node):
        if node.op_type == "Softmax" and list(node.output) == [probabilities]:
            if node.input[0] not in (logits, SCALED_LOGITS):
                break
            return index, node
    raise ExportError(f"the graph's {probabilities!r} output is not a Softmax of {logits!r}")


def with_temperature(source: Path, dest: Path, temperature: float) -> None:
    """Write ``source`` to ``dest`` with ``probabilities = Softmax(logits / temperature)``.

    A graph that already has a temperature gets the new value in its initializer (recalibrating a
    calibrated model, or an INT8 copy of one), so it never divides twice.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ExportError(f"temperature must be a positive number, got {temperature!r}")
    model = onnx.load(str(source))
    graph = model.graph
    value = numpy_helper.from_array(np.array(temperature, dtype=np.float32), TEMPERATURE)
    index, softmax_node = _softmax_head(graph)
    existing = [i for i, t in enumerate(graph.initializer) if t.name == TEMPERATURE]
    if softmax_node.input[0] == SCALED_LOGITS and existing:
        graph.initializer[existing[0]].CopyFrom(value)
    else:
        divide = helper.make_node(
            "Div", [OUTPUT_NAMES[0], TEMPERATURE], [SCALED_LOGITS], name="Temperature"
        )
        graph.initializer.append(value)
        softmax_node.input[0] = SCALED_LOGITS
        graph.node.insert(index, divide)  # right before the Softmax: still topologically sorted
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{dest}: the ONNX checker refused the calibrated graph: {exc}") from None
    onnx.save(model, str(dest))


def graph_temperature(path: Path) -> float | None:
    """The temperature inside a graph, or None for one without (an uncalibrated export)."""
    for tensor in onnx.load(str(path)).graph.initializer:
        if tensor.name == TEMPERATURE:
            return float(numpy_helper.to_array(tensor))
    return None


def run_both(path: Path, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, ...]:
    """A graph's logits and probabilities for uint8 NHWC images, by onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i : i + batch_size]})
        for i in range(0, len(images), batch_size)
    ]
    return tuple(np.concatenate([b[k] for b in batches]) for k in range(len(OUTPUT_NAMES)))


def check_temperature_graph(
    source: Path, calibrated: Path, images: np.ndarray, temperature: float
) -> float:
    """Raise ``ExportError`` unless the calibrated graph's logits are byte-identical to the
    source's and its probabilities are softmax(logits / T) within ``PROBABILITY_TOLERANCE``;
    returns the largest probability difference seen."""
    before, _ = run_both(source, images)
    logits, probabilities = run_both(calibrated, images)
    if before.tobytes() != logits.tobytes():
        raise ExportError(f"{calibrated}: the temperature changed the logits; nothing published")
    diff = float(np.abs(probabilities - softmax(logits, temperature)).max()) if len(images) else 0
    if not diff <= PROBABILITY_TOLERANCE:
        raise ExportError(
            f"{calibrated}: probabilities differ from softmax(logits / {temperature:.4f}) by "
            f"{diff:.2g} (allowed {PROBABILITY_TOLERANCE:g}); nothing published"
        )
    return diff
