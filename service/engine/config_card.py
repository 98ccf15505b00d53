"""The card of a version folder without ``card.json``, built in memory so the rest of the service
serves it unchanged: from its model folder's ``config.pbtxt``, or from the graph alone (Triton's
auto-complete). It has no evidence and no layer table, and its sha256 is of the bytes read."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from service.core.card import TENSOR, ModelCard, TensorSpec
from service.core.errors import InvalidCard, InvalidConfig
from service.engine.dtypes import DATATYPE_NAMES
from service.engine.triton_config import CONFIG_PBTXT, FileTensor, TritonConfig


def _graph_tensor(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise InvalidCard(f"graph tensor {value.name!r} is not a tensor; not served here")
    try:
        datatype = DATATYPE_NAMES[helper.tensor_dtype_to_np_dtype(tensor.elem_type)]
    except (KeyError, TypeError, ValueError):
        raise InvalidCard(
            f"graph tensor {value.name!r} has an element type not served here "
            f"({onnx.TensorProto.DataType.Name(tensor.elem_type)})"
        ) from None
    shape = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
    ]
    return TensorSpec(value.name, datatype, shape)


def graph_tensors(model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (less initializers) and outputs as specs; symbolic axes are -1."""
    try:
        graph = onnx.load_model_from_string(model_bytes).graph
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise InvalidCard(f"onnx cannot read the graph: {exc}") from None
    constants = {t.name for t in graph.initializer}
    inputs = [_graph_tensor(v) for v in graph.input if v.name not in constants]
    return inputs, [_graph_tensor(v) for v in graph.output]


def _declared(
    kind: str, file: Sequence[FileTensor], graph: Sequence[TensorSpec], max_batch_size: int
) -> list[TensorSpec]:
    """The file's tensors, checked against the graph as Triton's onnxruntime backend checks them:
    the same names and types, the same rank, each dim the graph's or fixing a dynamic one."""
    if not file:
        return list(graph)  # auto-complete: the graph's own
    by_name = {t.name: t for t in graph}
    names = [t.spec.name for t in file]
    if sorted(names) != sorted(by_name):
        raise InvalidConfig(
            f"{CONFIG_PBTXT}: {kind}s {sorted(names)} differ from the graph's {sorted(by_name)}"
        )
    for tensor in file:
        spec, actual = tensor.spec, by_name[tensor.spec.name]
        where = f"{CONFIG_PBTXT}: {kind} {spec.name!r}"
        if spec.datatype != actual.datatype:
            raise InvalidConfig(f"{where} is {spec.datatype}, the graph's is {actual.datatype}")
        batch = " (the batch axis of max_batch_size > 0, then dims)" if max_batch_size else ""
        if len(spec.shape) != len(actual.shape) or any(
            g not in (-1, c) for c, g in zip(spec.shape, actual.shape, strict=False)
        ):
            raise InvalidConfig(
                f"{where}: the graph's shape is {actual.shape}, the configuration's "
                f"{spec.shape}{batch}"
            )
    return [t.spec for t in file]


def _class_names(
    config: TritonConfig | None, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> list[str]:
    """The labels, checked against the outputs they name (their last axis, one per label)."""
    if config is None or not config.class_names:
        return []
    classes = list(config.class_names)
    for tensor in config.outputs:
        last = next(t for t in outputs if t.name == tensor.spec.name).shape[-1:]
        if tensor.label_filename and last != [-1] and last != [len(classes)]:
            raise InvalidConfig(
                f"{CONFIG_PBTXT}: output {tensor.spec.name!r} has {last[0] if last else 0} "
                f"values per item but {tensor.label_filename!r} has {len(classes)} labels"
            )
    return classes


def check_card_and_config(card: ModelCard, config: TritonConfig) -> None:
    """A version with both a card and a config.pbtxt: the two must describe one model."""
    batch = config.max_batch_size
    _declared("input", config.inputs, card.inputs, batch)
    _declared("output", config.outputs, card.outputs, batch)
    if config.class_names and list(config.class_names) != card.class_names:
        raise InvalidConfig(f"{CONFIG_PBTXT}: its labels differ from the card's class_names")


def config_card(
    name: str,
    version: int,
    sha256: str,
    config: TritonConfig | None,
    model_bytes: bytes,
) -> ModelCard:
    """The card of a version served from ``config`` (None: no config.pbtxt) and its graph."""
    graph_inputs, graph_outputs = graph_tensors(model_bytes)
    batch = config.max_batch_size if config else 0
    inputs = _declared("input", config.inputs if config else (), graph_inputs, batch)
    outputs = _declared("output", config.outputs if config else (), graph_outputs, batch)
    classes = _class_names(config, inputs, outputs)
    return ModelCard(
        name=name,
        version=version,
        class_names=classes,
        inputs=inputs,
        outputs=outputs,
        sha256=sha256,
        kind=TENSOR,  # the loader makes it an image classifier where the config says so
    )
