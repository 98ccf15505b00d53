"""The layer table read from an ONNX graph (``service.engine.layers.read_layers``): tiny graphs
built with ``onnx.helper``, each layer's reported tensor checked against onnxruntime's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.core.card import ModelCard, TensorSpec
from service.engine.layers import LayerReport, read_layers
from tests.support.models import lecture_graph, tiny_graph

OPSET = 17
NO_TABLE = "cannot read the layer table from the graph: "


def card(size: tuple[int, int, int]) -> ModelCard:
    """A card for a graph taking ``size`` (H, W, C) images; ``read_layers`` reads only that."""
    return ModelCard(
        name="net",
        version=1,
        class_names=["a", "b"],
        inputs=[TensorSpec("x", "FP32", [-1, *size])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        sha256="0" * 64,
    )


class Net:
    """A float NCHW graph built node by node from the input ``x`` of shape (1, C, H, W)."""

    def __init__(self, size: tuple[int, int, int]) -> None:
        self.size = size
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.last = "x"
        self.rng = np.random.default_rng(0)

    def param(self, name: str, value: np.ndarray | tuple[int, ...]) -> str:
        """An initializer: ``value`` itself, or random float32 weights of that shape."""
        array = value if isinstance(value, np.ndarray) else self.rng.normal(size=value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, *inputs: str, on: str = "", name: str = "", **attributes: Any) -> str:
        """``op`` on the last tensor (or on ``on``) and ``inputs``; returns its output tensor."""
        out = f"{op.lower()}{len(self.nodes)}"
        args = [on or self.last, *inputs]
        self.nodes.append(helper.make_node(op, args, [out], name=name or out, **attributes))
        self.last = out
        return out

    def model(self) -> onnx.ModelProto:
        """The graph, its output the last tensor."""
        h, w, c = self.size
        graph = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)],
            self.initializers,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    def report(self) -> LayerReport:
        return read_layers(self.model().SerializeToString(), card(self.size))


def run(model: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The named tensors of ``model`` computed by onnxruntime for input ``x``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in known:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return dict(zip(tensors, session.run(tensors, {input_name: x}), strict=True))


def hwc(array: np.ndarray) -> tuple[int, ...]:
    """A batch of one activation as the table writes it: NCHW -> (H, W, C), (n,) stays."""
    shape = array.shape[1:]
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def rows(report: LayerReport) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    assert report.table is not None, report.error
    return [
        (r.name, r.type, r.output_shape, r.params, r.trainable_params) for r in report.table.rows
    ]


def test_lecture_graph_reads_as_the_lecture_table_and_each_layer_names_its_tensor() -> None:
    graph = lecture_graph()
    report = read_layers(graph.SerializeToString(), card((32, 32, 3)))
    assert rows(report) == [
        ("conv2d", "conv2d", (30, 30, 32), 896, 896),
        ("max_pooling2d", "max_pool", (15, 15, 32), 0, 0),
        ("conv2d_1", "conv2d", (13, 13, 64), 18_496, 18_496),
        ("max_pooling2d_1", "max_pool", (6, 6, 64), 0, 0),
        ("conv2d_2", "conv2d", (4, 4, 64), 36_928, 36_928),
        ("flatten", "flatten", (1024,), 0, 0),
        ("dense", "dense", (64,), 65_600, 65_600),
        ("dense_1", "dense", (10,), 650, 650),
    ]  # the Softmax head is no layer
    data = report.as_dict()
    assert data["total_params"] == 122_570
    assert [row["output_shape"][0] for row in data["layers"]] == [None] * 8  # the batch axis
    assert data["layers"][0]["onnx_nodes"] == ["/conv0/Conv", "/relu0/Relu"]  # ReLU fused in
    tensors = report.tensor_of()
    assert tensors["conv2d"] == "relu0" and tensors["dense_1"] == "logits"

    # Every named tensor is the layer's output: onnxruntime computes it with the table's shape.
    images = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    computed = run(graph, list(tensors.values()), images)
    assert report.table is not None
    for row in report.table.rows:
        assert hwc(computed[tensors[row.name]]) == row.output_shape, row.name
    assert (computed[tensors["conv2d"]] >= 0).all()  # after its ReLU


def test_pad_before_a_conv_is_the_convs_padding() -> None:
    net = Net((8, 8, 3))
    net.node("Pad", net.param("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), name="pad")
    conv = net.node("Conv", net.param("w", (4, 3, 3, 3)), name="conv")
    report = net.report()
    assert rows(report) == [("conv2d", "conv2d", (8, 8, 4), 108, 108)]  # 3*3*3*4, no bias
    assert report.nodes == [["conv"]] and report.tensor_of() == {"conv2d": conv}
    assert report.table is not None and report.table.notes == ()
    x = np.ones((1, 3, 8, 8), np.float32)
    assert hwc(run(net.model(), [conv], x)[conv]) == (8, 8, 4)


def test_asymmetric_padding_is_same_when_it_matches_and_an_error_otherwise() -> None:
    same = Net((8, 8, 3))
    same.node("Conv", same.param("w", (2, 3, 3, 3)), same.param("b", (2,)), strides=[2, 2],
              pads=[0, 0, 1, 1])  # fmt: skip
    assert rows(same.report()) == [("conv2d", "conv2d", (4, 4, 2), 56, 56)]

    odd = Net((8, 8, 3))
    odd.node("Conv", odd.param("w", (2, 3, 3, 3)), strides=[2, 2], pads=[1, 1, 0, 0])
    report = odd.report()
    assert report.table is None
    assert (
        report.error == NO_TABLE + "asymmetric padding [1, 1, 0, 0] is neither symmetric nor 'same'"
    )


def test_batch_norm_activation_dropout_and_a_matmul_dense_with_its_bias() -> None:
    net = Net((4, 4, 2))
    bn = [net.param(f"bn.{p}", np.full(2, v, np.float32)) for p, v in
          (("scale", 2.0), ("bias", 0.5), ("mean", 0.0), ("var", 1.0))]  # fmt: skip
    net.node("BatchNormalization", *bn, name="bn")
    net.node("Relu", name="relu")  # after batch norm: a layer of its own
    net.node("Flatten", axis=1, name="flat")
    net.node("Dropout", name="drop")
    net.node("MatMul", net.param("dense.w", (32, 5)), name="matmul")
    net.node("Add", net.param("dense.b", (5,)), name="add")
    out = net.node("Sigmoid", name="sigmoid")  # fused into the dense layer
    report = net.report()
    assert rows(report) == [
        ("batch_normalization", "batch_norm", (4, 4, 2), 8, 4),  # gamma, beta trainable
        ("activation", "activation", (4, 4, 2), 0, 0),
        ("flatten", "flatten", (32,), 0, 0),
        ("dropout", "dropout", (32,), 0, 0),
        ("dense", "dense", (5,), 165, 165),  # 32*5 weights + 5 biases
    ]
    assert report.nodes[-1] == ["matmul", "add", "sigmoid"]
    assert report.tensor_of()["dense"] == out
    x = np.random.default_rng(2).normal(size=(1, 2, 4, 4)).astype(np.float32)
    probabilities = run(net.model(), [out], x)[out]
    assert probabilities.shape == (1, 5) and ((probabilities > 0) & (probabilities < 1)).all()


def test_the_exporters_erf_gelu_chain_is_one_activation_of_its_dense_layer() -> None:
    net = Net((2, 2, 1))
    flat = net.node("Flatten", axis=1, name="flat")
    gemm = net.node("Gemm", net.param("w", (3, 4)), net.param("b", (3,)), transB=1, name="gemm")
    net.node("Div", net.param("sqrt2", np.array(math.sqrt(2), np.float32)))
    net.node("Erf", name="erf")
    net.node("Add", net.param("one", np.array(1, np.float32)))
    net.node("Mul", net.last, on=gemm)
    gelu = net.node("Mul", net.param("half", np.array(0.5, np.float32)))
    report = net.report()
    assert rows(report) == [
        ("flatten", "flatten", (4,), 0, 0),
        ("dense", "dense", (3,), 15, 15),
    ]
    assert report.nodes == [["flat"], ["gemm", "erf"]]  # five nodes read as one GELU
    assert report.tensor_of() == {"flatten": flat, "dense": gelu}
    x = np.array([[[[0.5, -1.0], [2.0, 0.1]]]], np.float32)
    computed = run(net.model(), [gemm, gelu], x)
    pre = computed[gemm].astype(np.float64)
    expected = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2)))
    np.testing.assert_allclose(computed[gelu], expected, rtol=1e-5, atol=1e-6)


def _conv_relu(quantized: bool) -> Net:
    """x -> Conv(4 filters, 3x3, bias) -> ReLU, in float or as a QDQ (quantized) graph."""
    net = Net((6, 6, 3))
    weight = np.random.default_rng(3).normal(size=(4, 3, 3, 3)).astype(np.float32)
    if quantized:
        scale = net.param("x.scale", np.array(0.02, np.float32))
        zero = net.param("x.zero", np.array(128, np.uint8))
        net.node("QuantizeLinear", scale, zero)
        net.node("DequantizeLinear", scale, zero)
        stored = net.param("w.int8", np.clip(np.round(weight / 0.05), -127, 127).astype(np.int8))
        w_scale = net.param("w.scale", np.array(0.05, np.float32))
        w_zero = net.param("w.zero", np.array(0, np.int8))
        x = net.last
        w = net.node("DequantizeLinear", w_scale, w_zero, on=stored)
        net.last = x
    else:
        w = net.param("w", weight)
    net.node("Conv", w, net.param("b", (4,)), name="conv")
    net.node("Relu", name="relu")
    return net


def test_a_quantized_graph_reads_as_its_float_original() -> None:
    plain, qdq = _conv_relu(quantized=False), _conv_relu(quantized=True)
    expected = [("conv2d", "conv2d", (4, 4, 4), 112, 112)]  # 3*3*3*4 + 4
    assert rows(plain.report()) == rows(qdq.report()) == expected
    assert qdq.report().nodes == [["conv", "relu"]]
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)
    (out,) = run(qdq.model(), [qdq.last], x).values()
    assert hwc(out) == (4, 4, 4)


def test_a_shape_the_formulas_do_not_give_is_noted_and_the_graphs_shape_shown() -> None:
    net = Net((10, 10, 1))
    net.node("Conv", net.param("w", (2, 1, 3, 3)), dilations=[2, 2], name="dilated")
    report = net.report()
    assert report.table is not None
    assert report.table.rows[0].output_shape == (6, 6, 2)  # what the graph computes
    assert report.table.notes == (
        "conv2d: the graph outputs [6, 6, 2], the formula gives [8, 8, 2]",
    )
    out = run(net.model(), [net.last], np.zeros((1, 1, 10, 10), np.float32))[net.last]
    assert hwc(out) == (6, 6, 2)


def test_graphs_it_cannot_read_get_an_error_not_an_exception() -> None:
    net = Net((8, 8, 1))
    net.node("Conv", net.param("w", (2, 1, 3, 1)), name="tall")
    report = net.report()
    assert report.table is None and report.tensor_of() == {}
    assert report.error == NO_TABLE + "Conv 'tall': non-square kernel [3, 1]"
    assert report.as_dict() == {"error": report.error}

    unknown = read_layers(tiny_graph().SerializeToString(), card((32, 32, 3)))
    assert (
        unknown.error == NO_TABLE + "operator ReduceMean ('') has no layer in the lecture's terms"
    )

    garbage = read_layers(b"not a graph", card((32, 32, 3)))
    assert garbage.table is None and garbage.error.startswith(NO_TABLE)
