"""A model that is slow on purpose, for tests of what happens to requests queued behind a run:
the tiny graph plus a chain of 1024 x 1024 matrix products that depends on the input (so onnxruntime
cannot fold it away) and adds exactly zero to the logits, so its answers stay ``tiny_reference``'s.
A test that times its steps against a run asks for the run's length (``seconds``), not a number of
products: 40 products took a second on one machine and 0.64 s on a faster one, where a client
meant to leave while its request was still queued left just as the run ended.
"""

from __future__ import annotations

import json
import math
import timeit
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from service.core.card import CARD_FILE, MODEL_FILE
from tests.support.models import OPSET, card_for, tiny_graph

SIZE = 1024  # each product is 1024**3, a billion multiply-adds


def slow_graph(products: int) -> onnx.ModelProto:
    """``tiny_graph`` whose every run also multiplies ``products`` 1024 x 1024 matrices."""
    model = tiny_graph()
    graph = model.graph
    nodes = [
        helper.make_node("ReduceMean", ["x_scaled"], ["slow_scale"], keepdims=0),  # a scalar
        helper.make_node("Mul", ["slow_scale", "slow_eye"], ["slow_0"]),
    ]
    for i in range(products):  # values stay within [0, 1]: powers of a scaled identity
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_0"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{products}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
    ]
    for node in graph.node:  # the logits gain the chain's zero: the chain must run
        if node.op_type == "Add" and list(node.output) == ["logits"]:
            node.output[0] = "logits_fast"
    nodes.append(helper.make_node("Add", ["logits_fast", "slow_nothing"], ["logits"]))
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.eye(SIZE, dtype=np.float32), "slow_eye"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
        ]
    )
    _sort_softmax_last(graph)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == OPSET
    return model


def _sort_softmax_last(graph: onnx.GraphProto) -> None:
    """Nodes in topological order: the Softmax on ``logits`` after the new Add."""
    nodes = list(graph.node)
    softmax = [n for n in nodes if n.op_type == "Softmax"]
    rest = [n for n in nodes if n.op_type != "Softmax"]
    del graph.node[:]
    graph.node.extend(rest + softmax)


def products_for(seconds: float, threads: int = 1) -> int:
    """How many products make a run of at least about ``seconds`` here, with ``threads``
    onnxruntime threads: the fastest of three runs of an 8-product graph, scaled."""
    sample = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        slow_graph(sample).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: np.zeros((1, 32, 32, 3), np.uint8)}
    session.run(None, feed)  # warm-up
    fastest = min(timeit.repeat(lambda: session.run(None, feed), number=1, repeat=3))
    return max(1, math.ceil(seconds * sample / fastest))


def write_slow_model(
    root: Path, name: str = "slow", products: int = 16, seconds: float | None = None
) -> Path:
    """``<root>/<name>/1`` holding the slow graph and its card; returns the repository root.
    ``seconds``: as many products as make a run that long here (one onnxruntime thread)."""
    folder = root / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    count = products if seconds is None else products_for(seconds)
    onnx.save(slow_graph(count), str(folder / MODEL_FILE))
    card = card_for(name, 1, folder / MODEL_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card.to_dict()), encoding="utf-8")
    return root
