"""The layer table read from an ONNX graph: one row per layer in the lecture's terms.

Shapes come from ONNX shape inference and parameter counts from the initializers; the layers are
then re-derived with ``service.core.shapes`` (the lecture's formulas) and any disagreement is noted.
Convolution outputs are NCHW in the graph and are reported as (H, W, C) like Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
from onnx import shape_inference

from service.core.card import ModelCard
from service.core.errors import ServingError
from service.core.formulas import same_padding
from service.core.layer_specs import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool,
)
from service.core.shapes import LayerRow, LayerTable, layer_table

ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
# Plumbing that is not a layer: preprocessing inside the graph, layout and shape bookkeeping.
SKIPPED_OPS = {
    "Cast", "Mul", "Div", "Sub", "Transpose", "Identity", "Shape", "Constant", "Gather",
    "Concat", "Unsqueeze", "Squeeze", "Slice", "ConstantOfShape", "Expand",
}  # fmt: skip


@dataclass
class _Layer:
    spec: Layer  # named by ``layer_table`` (Keras' default names)
    nodes: list[str]
    output: str
    params: int = 0
    trainable: int = 0


@dataclass(frozen=True)
class LayerReport:
    """The table of a served graph, or why it could not be read (the model is served either way)."""

    table: LayerTable | None
    nodes: list[list[str]] = field(default_factory=list)
    error: str = ""
    outputs: list[str] = field(default_factory=list)
    """Per row, the graph tensor holding the layer's output (after its fused activation)."""

    def tensor_of(self) -> dict[str, str]:
        """Layer name (``conv2d``, ``max_pooling2d``...) -> the graph tensor it outputs."""
        if self.table is None:
            return {}
        return {row.name: out for row, out in zip(self.table.rows, self.outputs, strict=True)}

    def as_dict(self) -> dict[str, Any]:
        if self.table is None:
            return {"error": self.error}
        data = self.table.as_dict()
        for row, nodes in zip(data["layers"], self.nodes, strict=True):
            row["output_shape"] = [None, *row["output_shape"]]  # the batch axis
            row["onnx_nodes"] = nodes
        return data


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _square(values: list[int], what: str, node: onnx.NodeProto) -> int:
    if len(set(values)) != 1:
        raise ServingError(f"{node.op_type} {node.name!r}: non-square {what} {values}")
    return int(values[0])


def _padding(pads: list[int], size: int, kernel: int, stride: int) -> int | str:
    """ONNX pads [top, left, bottom, right] as the spec's padding."""
    if not any(pads):
        return "valid"
    if len(set(pads)) == 1:
        return int(pads[0])
    if (pads[0], pads[2]) == same_padding(size, kernel, stride):
        return "same"
    raise ServingError(f"asymmetric padding {pads} is neither symmetric nor 'same'")


def _without_qdq(
    nodes: list[onnx.NodeProto], initializers: set[str]
) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """A QDQ (quantized) graph read as its float original: Quantize/Dequantize pairs dropped and
    dequantized weights renamed to their stored tensors (same shape, so the same parameters)."""
    produced_by_q = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    alias: dict[str, str] = {}
    for n in nodes:
        if n.op_type == "DequantizeLinear":
            stored = n.input[0]
            alias[n.output[0]] = (
                stored if stored in initializers else produced_by_q.get(stored, stored)
            )
    if not alias:
        return nodes, {}
    kept = []
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        plain = onnx.NodeProto()
        plain.CopyFrom(n)
        plain.input[:] = [alias.get(i, i) for i in n.input]
        kept.append(plain)
    return kept, alias


def _fuse_erf_gelu(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The exporter writes GELU as x * 0.5 * (1 + erf(x / sqrt 2)): five nodes, one layer.

    Each such chain becomes one ``Gelu`` node from x to the chain's output, in its place.
    """
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_consumer(tensor: str, op: str) -> onnx.NodeProto | None:
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    fused: dict[int, onnx.NodeProto] = {}  # id of the chain's last node -> its Gelu
    dropped: set[int] = set()
    for erf in (n for n in nodes if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div":
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        first = add and only_consumer(add.output[0], "Mul")
        second = first and only_consumer(first.output[0], "Mul")
        if add is None or first is None or second is None or x not in first.input:
            continue
        gelu = onnx.helper.make_node("Gelu", [x], [second.output[0]], name=erf.name or "Gelu")
        dropped.update(id(n) for n in (div, erf, add, first))
        fused[id(second)] = gelu
    return [fused.get(id(n), n) for n in nodes if id(n) not in dropped]


class _GraphReader:
    """Walks a graph's nodes in order and groups them into layers in the lecture's terms: one
    handler per operator family, each adding a layer or folding a node into the last one."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, list[int | None]], hw: int):
        initializers = {t.name for t in graph.initializer}
        nodes, alias = _without_qdq(list(graph.node), initializers)
        self.nodes = _fuse_erf_gelu(nodes)
        self.graph, self.shapes, self.hw = graph, shapes, hw
        self.sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
        self.dims = {t.name: list(t.dims) for t in graph.initializer}
        self.outputs = {alias.get(o.name, o.name) for o in graph.output}
        self.layers: list[_Layer] = []
        self.pending_pad: list[int] | None = None  # a Pad node's pads, for the next Conv

    def read(self) -> list[_Layer]:
        handlers = {
            "Conv": self._conv,
            "Pad": self._pad,
            "MaxPool": self._pool,
            "AveragePool": self._pool,
            "Flatten": self._flatten,
            "Reshape": self._flatten,
            "Gemm": self._dense,
            "MatMul": self._dense,
            "Add": self._add,
            "BatchNormalization": self._batch_norm,
            "Dropout": self._dropout,
            **dict.fromkeys(ACTIVATION_OPS, self._activation),
        }
        for node in self.nodes:
            handler = handlers.get(node.op_type)
            if handler is not None and handler(node):
                continue
            if node.op_type == "Softmax" and node.output[0] in self.outputs:
                continue  # the probabilities head, not a layer
            if node.op_type not in SKIPPED_OPS and node.op_type != "Add":
                raise ServingError(
                    f"operator {node.op_type} ({node.name!r}) has no layer in the lecture's terms"
                )
        return self.layers

    def _add_layer(self, spec: Layer, node: onnx.NodeProto, params: int = 0) -> bool:
        self.layers.append(_Layer(spec, [node.name], node.output[0], params, params))
        return True

    def _follows(self, node: onnx.NodeProto) -> _Layer | None:
        """The last layer, if ``node`` reads its output."""
        last = self.layers[-1] if self.layers else None
        return last if last is not None and node.input and node.input[0] == last.output else None

    def _conv(self, node: onnx.NodeProto) -> bool:
        weight = self.dims[node.input[1]]  # (K, C, F, F)
        kernel = _square(weight[2:], "kernel", node)
        stride = _square(list(_attr(node, "strides", [1, 1])), "strides", node)
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if self.pending_pad is not None:
            pads = [p + q for p, q in zip(pads, self.pending_pad, strict=True)]
            self.pending_pad = None
        size = self.shapes.get(node.input[0], [None, None, self.hw])[2] or self.hw
        padding = _padding(pads, size, kernel, stride)
        spec = Conv2D("", weight[0], kernel, stride, padding, bias=len(node.input) > 2)
        params = sum(self.sizes[n] for n in node.input[1:] if n in self.sizes)
        return self._add_layer(spec, node, params)

    def _pad(self, node: onnx.NodeProto) -> bool:
        pads = list(_attr(node, "pads", []))
        if not pads:
            tensor = next(t for t in self.graph.initializer if t.name == node.input[1])
            if tensor.data_location == onnx.TensorProto.EXTERNAL:  # to_array would read a file
                raise ServingError(f"Pad {node.name!r}: its pads lie in an external data file")
            pads = list(onnx.numpy_helper.to_array(tensor))
        self.pending_pad = [pads[2], pads[3], pads[6], pads[7]]  # NCHW begins, then ends
        return True

    def _pool(self, node: onnx.NodeProto) -> bool:
        pool = _square(list(_attr(node, "kernel_shape", [])), "kernel_shape", node)
        stride = _square(list(_attr(node, "strides", [pool, pool])), "strides", node)
        kind = MaxPool if node.op_type == "MaxPool" else AvgPool
        return self._add_layer(kind("", pool, stride), node)

    def _flatten(self, node: onnx.NodeProto) -> bool:
        return self._add_layer(Flatten(""), node)

    def _dense(self, node: onnx.NodeProto) -> bool:
        if len(node.input) < 2 or node.input[1] not in self.dims:
            return False  # a MatMul of two activations: not a layer of ours
        weight = self.dims[node.input[1]]
        trans = node.op_type == "Gemm" and _attr(node, "transB", 0)
        units = weight[0] if trans else weight[-1]
        params = sum(self.sizes[n] for n in node.input[1:] if n in self.sizes)
        return self._add_layer(Dense("", units, bias=len(node.input) > 2), node, params)

    def _add(self, node: onnx.NodeProto) -> bool:
        """A MatMul's bias, written as its own Add."""
        last = self._follows(node)
        if last is None or not isinstance(last.spec, Dense):
            return False
        bias_name = next((n for n in node.input if n in self.sizes), None)
        if bias_name is not None and not last.spec.bias:
            last.spec = replace(last.spec, bias=True)
            last.params += self.sizes[bias_name]
            last.trainable += self.sizes[bias_name]
        last.nodes.append(node.name)
        last.output = node.output[0]
        return True

    def _activation(self, node: onnx.NodeProto) -> bool:
        fn = ACTIVATION_OPS[node.op_type]
        last = self._follows(node)
        spec = last.spec if last is not None else None
        if last is not None and isinstance(spec, Conv2D | Dense) and spec.activation is None:
            last.spec = replace(spec, activation=fn)  # fused, as Keras writes it
            last.nodes.append(node.name)
            last.output = node.output[0]
            return True
        return self._add_layer(Activation("", fn), node)

    def _batch_norm(self, node: onnx.NodeProto) -> bool:
        channels = self.sizes[node.input[1]]
        layer = _Layer(BatchNorm(""), [node.name], node.output[0], 4 * channels, 2 * channels)
        self.layers.append(layer)
        return True

    def _dropout(self, node: onnx.NodeProto) -> bool:
        return self._add_layer(Dropout(""), node)


def _hwc(shape: list[int | None] | None) -> tuple[int, ...] | None:
    """A graph shape without the batch axis, NCHW turned into (H, W, C)."""
    if not shape or any(d is None for d in shape[1:]):
        return None
    rest = [int(d) for d in shape[1:] if d is not None]
    return (rest[1], rest[2], rest[0]) if len(rest) == 3 else tuple(rest)


def read_layers(model_bytes: bytes, card: ModelCard) -> LayerReport:
    """The layer table of a graph; never raises (a graph it cannot read gets ``error``)."""
    try:
        model = shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
        graph = model.graph
        shapes: dict[str, list[int | None]] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor = value.type.tensor_type
            if tensor.HasField("shape"):
                shapes[value.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
                ]
        h, w, c = card.inputs[0].shape[1:]
        layers = _GraphReader(graph, shapes, w).read()
        arithmetic = layer_table((h, w, c), [layer.spec for layer in layers])
        rows, notes = [], list(arithmetic.notes)
        for layer, row in zip(layers, arithmetic.rows, strict=True):
            inferred = _hwc(shapes.get(layer.output))
            if inferred is not None and inferred != row.output_shape:
                notes.append(
                    f"{row.name}: the graph outputs {list(inferred)}, the formula gives "
                    f"{list(row.output_shape)}"
                )
            if layer.params != row.params:
                notes.append(
                    f"{row.name}: the graph holds {layer.params} parameters, the formula gives "
                    f"{row.params}"
                )
            rows.append(
                LayerRow(
                    row.name,
                    row.type,
                    inferred or row.output_shape,
                    layer.params,
                    layer.trainable,
                    row.note,
                )
            )
        table = LayerTable((h, w, c), tuple(rows), tuple(notes))
        return LayerReport(
            table, [layer.nodes for layer in layers], outputs=[layer.output for layer in layers]
        )
    except Exception as exc:  # a graph we cannot read must not stop the model being served
        message = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
        return LayerReport(None, error=f"cannot read the layer table from the graph: {message}")
