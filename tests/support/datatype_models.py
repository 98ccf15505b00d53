"""Tensor models for every datatype, built with ``onnx.helper`` as Triton's samples are (and as
``../shared/peers/triton_reference.py`` rebuilds them): ``simple`` (INT32 add/sub),
``simple_int8``, ``simple_string`` (BYTES add/sub: numbers as strings, Cast to INT32 and back),
``simple_identity`` (BYTES), and ``identity_<datatype>`` for each numeric datatype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.core.card import TensorSpec
from service.core.datatypes import DATATYPES
from tests.support.models import OPSET, write_model

ADD_SUB = {"simple": "INT32", "simple_int8": "INT8"}
STRINGS = "simple_string"
BYTES_IDENTITY = "simple_identity"
NUMERIC = [name for name in DATATYPES if name != "BYTES"]
ROW = 16  # Triton's samples: [-1, 16]


def identity_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def _elem(datatype: str) -> int:
    if datatype == "BYTES":
        return int(TensorProto.STRING)
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(DATATYPES[datatype].dtype)))


def _graph(name: str, datatype: str, nodes: list[onnx.NodeProto], tensors: int) -> onnx.ModelProto:
    elem = _elem(datatype)
    inputs = [helper.make_tensor_value_info(f"INPUT{i}", elem, ["N", ROW]) for i in range(tensors)]
    outputs = [
        helper.make_tensor_value_info(f"OUTPUT{i}", elem, ["N", ROW]) for i in range(tensors)
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def add_sub_nodes(first: str = "INPUT0", second: str = "INPUT1") -> list[onnx.NodeProto]:
    return [
        helper.make_node("Add", [first, second], ["OUTPUT0" if first == "INPUT0" else "sum"]),
        helper.make_node("Sub", [first, second], ["OUTPUT1" if first == "INPUT0" else "diff"]),
    ]


def string_add_sub_nodes() -> list[onnx.NodeProto]:
    """Triton's ``simple_string``: the strings read as INT32, added and subtracted, written back."""
    to_int, to_string = int(TensorProto.INT32), int(TensorProto.STRING)
    return [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=to_int),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=to_int),
        *add_sub_nodes("a", "b"),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=to_string),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=to_string),
    ]


def _write(root: Path, name: str, datatype: str, graph: onnx.ModelProto, tensors: int) -> None:
    def specs(prefix: str) -> list[TensorSpec]:
        return [TensorSpec(f"{prefix}{i}", datatype, [-1, ROW]) for i in range(tensors)]

    changes = {"kind": "tensor", "inputs": specs("INPUT"), "outputs": specs("OUTPUT")}
    write_model(root, name, 1, graph, card_changes={**changes, "class_names": []})


def datatype_repository(root: Path) -> Path:
    """Every model of this module at version 1, beside the tiny image classifier."""
    write_model(root, "tiny")
    for name, datatype in ADD_SUB.items():
        _write(root, name, datatype, _graph(name, datatype, add_sub_nodes(), 2), 2)
    _write(root, STRINGS, "BYTES", _graph(STRINGS, "BYTES", string_add_sub_nodes(), 2), 2)
    identity = [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])]
    _write(root, BYTES_IDENTITY, "BYTES", _graph(BYTES_IDENTITY, "BYTES", identity, 1), 1)
    for datatype in NUMERIC:
        name = identity_name(datatype)
        _write(root, name, datatype, _graph(name, datatype, identity, 1), 1)
    return root


def sample(datatype: str, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` x 16 values of ``datatype``, its extremes among them (BYTES: text, some of it
    outside ASCII, one empty and one holding a NUL)."""
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        words = ["", "héllo", "a\x00b", "😀", *(str(n) for n in rng.integers(-999, 999, 12))]
        return np.array(
            [words[i % len(words) :] + words[: i % len(words)] for i in range(rows)], dtype=object
        )
    dtype = np.dtype(DATATYPES[datatype].dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, (rows, ROW)).astype(bool)
    if dtype.kind == "f":
        values = rng.standard_normal((rows, ROW)).astype(dtype)
        values[0, :2] = np.finfo(dtype).min, np.finfo(dtype).max
        return values
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, (rows, ROW), dtype=dtype, endpoint=True)
    values[0, :2] = info.min, info.max
    return values
