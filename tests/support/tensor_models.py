"""Tensor models (any ONNX graph its card lists, ``"kind": "tensor"``) built with ``onnx.helper``:
Triton's first sample ``simple`` (two INT32 [-1, 16] inputs, their sum and difference), the same
without a batch axis, and a one-input FP32 graph; ``tensor_repository`` writes them beside the
tiny image classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.core.card import TENSOR, TensorSpec
from tests.support.models import OPSET, write_model

SIMPLE = "simple"  # INT32 add/sub, batched: INPUT0, INPUT1 [-1, 16]
FIXED = "simple_nobatch"  # the same with no batch axis: [16] each, one request per run
FP32 = "affine"  # one FP32 input [-1, 4]: OUTPUT = 2 * INPUT + 1
LONG = "simple_long"  # no batch axis, a first axis longer than MAX_IMAGES_PER_REQUEST: [2048]


def add_sub_graph(shape: list[int | str], elem: int = TensorProto.INT32) -> onnx.ModelProto:
    """Triton's ``simple``: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    inputs = [helper.make_tensor_value_info(n, elem, shape) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, elem, shape) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(nodes, "simple", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def affine_graph() -> onnx.ModelProto:
    """One FP32 input ``INPUT`` [N, 4] -> ``OUTPUT`` = 2 * INPUT + 1."""
    x = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Mul", ["INPUT", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "one"], ["OUTPUT"]),
    ]
    graph = helper.make_graph(nodes, "affine", [x], [y], [two, one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def widen_graph(factor: int) -> onnx.ModelProto:
    """One FP32 input ``INPUT`` [N, 4] -> ``OUTPUT`` [N, 4 * factor], the input tiled: an answer
    ``factor`` times its request (a model whose outputs outgrow its inputs)."""
    x = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["N", 4 * factor])
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [1, factor])
    nodes = [helper.make_node("Tile", ["INPUT", "repeats"], ["OUTPUT"])]
    graph = helper.make_graph(nodes, "widen", [x], [y], [repeats])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def write_tensor_model(
    root: Path,
    name: str,
    graph: onnx.ModelProto,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> None:
    """A version folder whose card says ``kind: tensor`` and lists the graph's tensors."""
    changes = {"kind": TENSOR, "inputs": inputs, "outputs": outputs, "class_names": []}
    write_model(root, name, 1, graph, card_changes=changes)


def add_sub_specs(datatype: str, shape: list[int]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [TensorSpec(n, datatype, shape) for n in ("INPUT0", "INPUT1")]
    return inputs, [TensorSpec(n, datatype, shape) for n in ("OUTPUT0", "OUTPUT1")]


def tensor_repository(root: Path) -> Path:
    """``tiny`` (an image classifier) and the four tensor models, each at version 1."""
    write_model(root, "tiny")
    write_tensor_model(root, SIMPLE, add_sub_graph(["N", 16]), *add_sub_specs("INT32", [-1, 16]))
    write_tensor_model(root, FIXED, add_sub_graph([16]), *add_sub_specs("INT32", [16]))
    write_tensor_model(root, LONG, add_sub_graph([2048]), *add_sub_specs("INT32", [2048]))
    write_tensor_model(
        root,
        FP32,
        affine_graph(),
        [TensorSpec("INPUT", "FP32", [-1, 4])],
        [TensorSpec("OUTPUT", "FP32", [-1, 4])],
    )
    return root


def simple_inputs(rows: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two INT32 [rows, 16] arrays for ``simple``."""
    rng = np.random.default_rng(seed)
    first = rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32)
    return first, rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32)
