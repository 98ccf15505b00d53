"""The calculator agrees with the shapes onnxruntime produces for random conv/pool stacks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from service.core.errors import InvalidLayerSpec
from service.core.formulas import same_padding
from service.core.shapes import layer_table

conv_layers = st.fixed_dictionaries(
    {
        "type": st.just("conv2d"),
        "filters": st.integers(1, 6),
        "kernel": st.integers(1, 4),
        "stride": st.integers(1, 3),
        "padding": st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 2)),
        "bias": st.booleans(),
    }
)
pool_layers = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["max_pool", "avg_pool"]),
        "pool": st.integers(1, 3),
        "stride": st.integers(1, 3),
    }
)
batch_norms = st.just({"type": "batch_norm"})
stacks = st.lists(st.one_of(conv_layers, pool_layers, batch_norms), min_size=1, max_size=5)


def _graph(input_shape: tuple[int, int, int], stack: list[dict[str, Any]]) -> tuple[bytes, int]:
    """The stack as an NCHW ONNX graph with every layer's tensor an output; and its parameters."""
    h, w, c = input_shape
    rng = np.random.default_rng(0)
    nodes, initializers, outputs = [], [], []
    x = "x"
    for i, spec in enumerate(stack):
        out = f"y{i}"
        if spec["type"] == "conv2d":
            f, s, k = spec["kernel"], spec["stride"], spec["filters"]
            if spec["padding"] == "same":
                (top, bottom), (left, right) = same_padding(h, f, s), same_padding(w, f, s)
            elif spec["padding"] == "valid":
                top = bottom = left = right = 0
            else:
                top = bottom = left = right = spec["padding"]
            weight = numpy_helper.from_array(
                rng.normal(size=(k, c, f, f)).astype(np.float32), f"w{i}"
            )
            initializers.append(weight)
            inputs = [x, f"w{i}"]
            if spec["bias"]:
                initializers.append(numpy_helper.from_array(np.zeros(k, np.float32), f"b{i}"))
                inputs.append(f"b{i}")
            pads = [top, left, bottom, right]
            conv = helper.make_node("Conv", inputs, [out], kernel_shape=[f, f], strides=[s, s])
            conv.attribute.append(helper.make_attribute("pads", pads))
            nodes.append(conv)
            h, w, c = (h + top + bottom - f) // s + 1, (w + left + right - f) // s + 1, k
        elif spec["type"] == "batch_norm":
            names = [f"bn{i}_{p}" for p in ("scale", "bias", "mean", "var")]
            for name in names:
                initializers.append(numpy_helper.from_array(np.ones(c, np.float32), name))
            nodes.append(helper.make_node("BatchNormalization", [x, *names], [out]))
        else:
            op = "MaxPool" if spec["type"] == "max_pool" else "AveragePool"
            f, s = spec["pool"], spec["stride"]
            nodes.append(helper.make_node(op, [x], [out], kernel_shape=[f, f], strides=[s, s]))
            h, w = (h - f) // s + 1, (w - f) // s + 1
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        x = out
    graph_input = helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, input_shape[2], input_shape[0], input_shape[1]]
    )
    graph = helper.make_graph(nodes, "stack", [graph_input], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    params = sum(math.prod(t.dims) for t in initializers)
    return model.SerializeToString(), params


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(3, 20),
    w=st.integers(3, 20),
    c=st.integers(1, 4),
    stack=stacks,
)
def test_calculator_shapes_and_params_match_onnxruntime(
    h: int, w: int, c: int, stack: list[dict[str, Any]]
) -> None:
    try:
        table = layer_table((h, w, c), stack)
    except InvalidLayerSpec:
        assume(False)  # an impossible stack: covered by the 422 tests
        return
    model, params = _graph((h, w, c), stack)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(1, c, h, w)).astype(np.float32)
    results = session.run(None, {"x": x})
    produced = [(r.shape[2], r.shape[3], r.shape[1]) for r in results]
    assert [row.output_shape for row in table.rows] == produced
    assert table.total_params == params
