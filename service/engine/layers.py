"""The layer table read from an ONNX graph: one row per layer in the lecture's terms.

Shapes come from ONNX shape inference and parameter counts from the initializers; the layers are
then re-derived with ``service.core.shapes`` (the lecture's formulas) and any disagreement is noted.
Convolution outputs are NCHW in the graph and are reported as (H, W, C) like Keras.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import shape_inference

from service.core.card import ModelCard
from service.core.errors import ServingError
from service.core.shapes import LayerRow, LayerTable, layer_table, same_padding

log = logging.getLogger(__name__)

ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
# Plumbing that is not a layer: preprocessing inside the graph, layout and shape bookkeeping.
SKIPPED_OPS = {
    "Cast", "Mul", "Div", "Sub", "Transpose", "Identity", "Shape", "Constant", "Gather",
    "Concat", "Unsqueeze", "Squeeze", "Slice", "ConstantOfShape", "Expand",
}  # fmt: skip


@dataclass
class _Layer:
    spec: dict[str, Any]
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


def _graph_layers(
    graph: onnx.GraphProto, shapes: dict[str, list[int | None]], hw: int
) -> list[_Layer]:
    initializers = {t.name for t in graph.initializer}
    nodes, alias = _without_qdq(list(graph.node), initializers)
    nodes = _fuse_erf_gelu(nodes)
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    dims = {t.name: list(t.dims) for t in graph.initializer}
    outputs = {alias.get(o.name, o.name) for o in graph.output}
    layers: list[_Layer] = []
    pending_pad: list[int] | None = None
    for node in nodes:
        op = node.op_type
        last = layers[-1] if layers else None
        follows = last is not None and node.input and node.input[0] == last.output
        if op == "Conv":
            weight = dims[node.input[1]]  # (K, C, F, F)
            kernel = _square(weight[2:], "kernel", node)
            stride = _square(list(_attr(node, "strides", [1, 1])), "strides", node)
            pads = list(_attr(node, "pads", [0, 0, 0, 0]))
            if pending_pad is not None:
                pads = [p + q for p, q in zip(pads, pending_pad, strict=True)]
            size = shapes.get(node.input[0], [None, None, hw])[2] or hw
            spec = {
                "type": "conv2d",
                "filters": weight[0],
                "kernel": kernel,
                "stride": stride,
                "padding": _padding(pads, size, kernel, stride),
                "bias": len(node.input) > 2,
            }
            params = sum(sizes[n] for n in node.input[1:] if n in sizes)
            layers.append(_Layer(spec, [node.name], node.output[0], params, params))
            pending_pad = None
        elif op == "Pad":
            pad = list(_attr(node, "pads", [])) or list(
                onnx.numpy_helper.to_array(
                    next(t for t in graph.initializer if t.name == node.input[1])
                )
            )
            pending_pad = [pad[2], pad[3], pad[6], pad[7]]  # NCHW begins, then ends
        elif op in ("MaxPool", "AveragePool"):
            pool = _square(list(_attr(node, "kernel_shape", [])), "kernel_shape", node)
            stride = _square(list(_attr(node, "strides", [pool, pool])), "strides", node)
            kind = "max_pool" if op == "MaxPool" else "avg_pool"
            layers.append(_Layer({"type": kind, "pool": pool, "stride": stride}, [node.name],
                                 node.output[0]))  # fmt: skip
        elif op in ("Flatten", "Reshape"):
            layers.append(_Layer({"type": "flatten"}, [node.name], node.output[0]))
        elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in dims:
            weight = dims[node.input[1]]
            trans = op == "Gemm" and _attr(node, "transB", 0)
            units = weight[0] if trans else weight[-1]
            bias = len(node.input) > 2
            params = sum(sizes[n] for n in node.input[1:] if n in sizes)
            spec = {"type": "dense", "units": units, "bias": bias}
            layers.append(_Layer(spec, [node.name], node.output[0], params, params))
        elif op == "Add" and follows and last is not None and last.spec["type"] == "dense":
            bias_name = next((n for n in node.input if n in sizes), None)
            if bias_name is not None and not last.spec["bias"]:
                last.spec["bias"] = True
                last.params += sizes[bias_name]
                last.trainable += sizes[bias_name]
            last.nodes.append(node.name)
            last.output = node.output[0]
        elif op in ACTIVATION_OPS:
            fn = ACTIVATION_OPS[op]
            if (
                follows
                and last is not None
                and last.spec["type"] in ("conv2d", "dense")
                and ("activation" not in last.spec)
            ):
                last.spec["activation"] = fn
                last.nodes.append(node.name)
                last.output = node.output[0]
            else:
                layers.append(_Layer({"type": "activation", "fn": fn}, [node.name], node.output[0]))
        elif op == "BatchNormalization":
            channels = sizes[node.input[1]]
            layers.append(
                _Layer({"type": "batch_norm"}, [node.name], node.output[0], 4 * channels,
                       2 * channels)
            )  # fmt: skip
        elif op == "Dropout":
            layers.append(_Layer({"type": "dropout"}, [node.name], node.output[0]))
        elif op == "Softmax" and node.output[0] in outputs:
            continue  # the probabilities head, not a layer
        elif op in SKIPPED_OPS or op == "Add":
            continue
        else:
            raise ServingError(f"operator {op} ({node.name!r}) has no layer in the lecture's terms")
    return layers


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
        layers = _graph_layers(graph, shapes, w)
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
        log.warning("%s v%d: no layer table: %s", card.name, card.version, message)
        return LayerReport(None, error=f"cannot read the layer table from the graph: {message}")
