"""Tiny real ONNX graphs built with ``onnx.helper`` (no torch): the tiny graph (mean RGB through a
matrix, answered in numpy by ``tiny_reference``) and the lecture CNN, their cards, and model
repositories on disk holding them (``make_model_repo``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, TensorSpec, sha256_file
from service.core.shapes import layer_table
from training.architectures import LECTURE as LECTURE_LAYERS

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
OPSET = 17


def tiny_weights(classes: int = 10, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the tiny graph: logits = mean RGB (0..1) @ W + b. Deterministic per seed."""
    rng = np.random.default_rng(7)
    weight = rng.normal(0.0, 3.0, size=(channels, classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(classes,)).astype(np.float32)
    return weight, bias


def tiny_reference(images: np.ndarray) -> np.ndarray:
    """What the tiny graph should answer, computed in numpy: the softmax probabilities."""
    weight, bias = tiny_weights(classes=10, channels=images.shape[-1])
    logits = (images.astype(np.float64) / 255.0).mean(axis=(1, 2)) @ weight + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _head(nodes: list[onnx.NodeProto], size: tuple[int, int, int]) -> list[onnx.ValueInfoProto]:
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    return [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
    ]


def _preprocess(size: tuple[int, int, int]) -> tuple[onnx.ValueInfoProto, list[onnx.NodeProto]]:
    h, w, c = size
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", h, w, c])
    nodes = [
        helper.make_node("Cast", ["images"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_float", "scale"], ["x_scaled"]),
    ]
    return images, nodes


def tiny_graph(size: tuple[int, int, int] = (32, 32, 3)) -> onnx.ModelProto:
    """uint8 NHWC -> Cast -> Mul(1/255) -> ReduceMean(H, W) -> MatMul -> Add -> logits, Softmax."""
    images, nodes = _preprocess(size)
    weight, bias = tiny_weights(channels=size[2])
    nodes += [
        helper.make_node("ReduceMean", ["x_scaled"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "weight"], ["matmul"]),
        helper.make_node("Add", ["matmul", "bias"], ["logits"]),
    ]
    outputs = _head(nodes, size)
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
    ]
    graph = helper.make_graph(nodes, "tiny", [images], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def lecture_graph() -> onnx.ModelProto:
    """The lecture's CNN (122,570 parameters) as torch would export it: NCHW convs, Gemm heads."""
    rng = np.random.default_rng(0)
    images, nodes = _preprocess((32, 32, 3))
    nodes.append(helper.make_node("Transpose", ["x_scaled"], ["x0"], perm=[0, 3, 1, 2]))
    initializers = [numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")]

    def param(name: str, shape: tuple[int, ...]) -> str:
        initializers.append(
            numpy_helper.from_array(rng.normal(0, 0.05, size=shape).astype(np.float32), name)
        )
        return name

    x, c = "x0", 3
    for i, k in enumerate((32, 64, 64)):
        w, b = param(f"conv{i}.weight", (k, c, 3, 3)), param(f"conv{i}.bias", (k,))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], name=f"/conv{i}/Conv"))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"/relu{i}/Relu"))
        x, c = f"relu{i}", k
        if i < 2:
            nodes.append(
                helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            x = f"pool{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    w, b = param("dense.weight", (64, 1024)), param("dense.bias", (64,))
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["dense"], transB=1))
    nodes.append(helper.make_node("Relu", ["dense"], ["dense_relu"]))
    w, b = param("out.weight", (10, 64)), param("out.bias", (10,))
    nodes.append(helper.make_node("Gemm", ["dense_relu", w, b], ["logits"], transB=1))
    outputs = _head(nodes, (32, 32, 3))
    graph = helper.make_graph(nodes, "lecture", [images], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def card_for(
    name: str, version: int, model_path: Path, size: tuple[int, int, int] = (32, 32, 3)
) -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        class_names=list(CIFAR_CLASSES),
        inputs=[TensorSpec("images", "UINT8", [-1, *size])],
        outputs=[
            TensorSpec("logits", "FP32", [-1, 10]),
            TensorSpec("probabilities", "FP32", [-1, 10]),
        ],
        sha256=sha256_file(model_path),
        preprocessing={"scaling": "inside the graph: pixels / 255"},
        architecture={"input_shape": list(size), "layers": LECTURE_LAYERS},
        layer_table=layer_table((32, 32, 3), LECTURE_LAYERS).as_dict(),
        metrics={"test_accuracy": 0.1},
        created="2024-01-01T00:00:00Z",
    )


def write_model(
    root: Path,
    name: str = "tiny",
    version: int = 1,
    graph: onnx.ModelProto | None = None,
    card_changes: dict[str, Any] | None = None,
    raw_card: dict[str, Any] | None = None,
) -> Path:
    """One version folder with ``model.onnx`` and its card; ``card_changes`` break the card."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    onnx.save(graph if graph is not None else tiny_graph(), str(model_path))
    card = replace(card_for(name, version, model_path), **(card_changes or {}))
    data = raw_card if raw_card is not None else card.to_dict()
    (folder / CARD_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def make_model_repo(
    root: Path, models: dict[str, list[int]] | None = None, lecture: bool = True
) -> Path:
    """A repository of tiny models (default ``tiny`` v1 and v2) plus, if asked, the lecture CNN
    as ``cifar10_cnn`` v1. Returns the repository folder."""
    repo = root / "models"
    for name, versions in (models if models is not None else {"tiny": [1, 2]}).items():
        for version in versions:
            write_model(repo, name, version)
    if lecture:
        write_model(repo, "cifar10_cnn", 1, graph=lecture_graph())
    (repo / "tiny").mkdir(parents=True, exist_ok=True)
    (repo / "tiny" / ".tmp-3").mkdir(exist_ok=True)  # an unfinished publish: ignored
    (repo / "README.txt").write_text("not a model\n")
    return repo
