"""A loaded model (``service.engine.runtime.ModelRuntime``) on the tiny graph in a real onnxruntime
session: its answers against numpy, the options it hands the session, providers, and its life
from first request to close."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.core.card import MODEL_FILE, ModelCard, TensorSpec
from service.core.errors import InvalidCard, ProviderUnavailable, ServingError
from service.engine.batcher import BatchStats
from service.engine.dtypes import session_tensors
from service.engine.providers import resolve_providers
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.thread_policy import ThreadScheduling
from tests.support.models import card_for, tiny_graph, tiny_reference

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",))
IMAGES = np.random.default_rng(11).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


def tiny_runtime(tmp_path: Path, options: RuntimeOptions = CPU_ONLY) -> ModelRuntime:
    path = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(), str(path))
    return ModelRuntime(card_for("tiny", 3, path), path.read_bytes(), options)


def test_run_answers_what_numpy_computes_for_every_output_or_the_ones_asked(
    tmp_path: Path,
) -> None:
    runtime = tiny_runtime(tmp_path)
    outputs = runtime.run(IMAGES)
    assert list(outputs) == ["logits", "probabilities"]
    np.testing.assert_allclose(outputs["probabilities"], tiny_reference(IMAGES), atol=1e-5)
    softmax = np.exp(outputs["logits"]) / np.exp(outputs["logits"]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(outputs["probabilities"], softmax, atol=1e-5)
    only = runtime.run(IMAGES[:2], outputs=["logits"])
    assert list(only) == ["logits"] and only["logits"].shape == (2, 10)
    np.testing.assert_array_equal(only["logits"], outputs["logits"][:2])
    runtime.close()


def test_it_describes_the_graph_and_the_card(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path)
    assert (runtime.name, runtime.version) == ("tiny", 3)
    assert runtime.inputs == [TensorSpec("images", "UINT8", [-1, 32, 32, 3])]
    assert runtime.outputs == [
        TensorSpec("logits", "FP32", [-1, 10]),
        TensorSpec("probabilities", "FP32", [-1, 10]),
    ]
    assert runtime.output_names == ["logits", "probabilities"]
    assert runtime.input.name == "images" and runtime.image_shape == (32, 32, 3)
    assert runtime.providers == ["CPUExecutionProvider"] and runtime.missing_providers == []
    runtime.close()


def test_graph_tensors_write_symbolic_and_unknown_axes_as_minus_one() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, None])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, 3, None])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)],
                              "g", [x], [y])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session_tensors(session.get_inputs()) == [TensorSpec("x", "FP16", [-1, 3, -1])]
    assert session_tensors(session.get_outputs()) == [TensorSpec("y", "INT64", [2, 3, -1])]


def test_the_options_reach_the_session(tmp_path: Path) -> None:
    options = replace(CPU_ONLY, intra_op_threads=2, inter_op_threads=3,
                      graph_optimization_level="disable")  # fmt: skip
    runtime = tiny_runtime(tmp_path, options)
    session_options = runtime.session.get_session_options()
    assert session_options.intra_op_num_threads == 2
    assert session_options.inter_op_num_threads == 3
    assert session_options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_allclose(
        runtime.run(IMAGES)["probabilities"], tiny_reference(IMAGES), atol=1e-5
    )  # the same answers unoptimised
    runtime.close()


def test_a_provider_it_cannot_have_is_missing_and_fails_the_load_only_when_required(
    tmp_path: Path,
) -> None:
    wanted = ("NoSuchExecutionProvider", "CPUExecutionProvider")
    assert resolve_providers(wanted) == (["CPUExecutionProvider"], ["NoSuchExecutionProvider"])
    assert resolve_providers(["NoSuchExecutionProvider"])[0] == ["CPUExecutionProvider"]
    runtime = tiny_runtime(tmp_path, replace(CPU_ONLY, providers=wanted))
    assert runtime.providers == ["CPUExecutionProvider"]
    assert runtime.missing_providers == ["NoSuchExecutionProvider"]
    runtime.close()
    with pytest.raises(ProviderUnavailable) as raised:
        tiny_runtime(tmp_path, replace(CPU_ONLY, providers=wanted, require_providers=True))
    assert raised.value.message.startswith(
        "REQUIRE_PROVIDERS is set and the session runs on CPUExecutionProvider: "
        "NoSuchExecutionProvider is not in this onnxruntime build"
    )


def test_a_graph_onnxruntime_cannot_load_is_an_invalid_card(tmp_path: Path) -> None:
    path = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(), str(path))
    with pytest.raises(InvalidCard, match=r"^onnxruntime cannot load the graph: "):
        ModelRuntime(card_for("tiny", 1, path), b"not a graph", CPU_ONLY)


def test_a_failing_run_is_a_serving_error_naming_the_model(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path)
    with pytest.raises(ServingError) as raised:
        runtime.run(IMAGES.astype(np.float32))  # the graph takes uint8
    assert type(raised.value) is ServingError
    assert raised.value.message == "inference failed for model 'tiny'"
    runtime.close()


def test_warm_up_runs_one_image_of_the_cards_datatype(tmp_path: Path) -> None:
    """A graph taking float pixels: the warm-up batch must be float32 zeros of one image."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 4, 4, 3])
    y = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])
    node = helper.make_node("ReduceSum", ["pixels", "axes"], ["total"], keepdims=0)
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    graph = helper.make_graph([node], "sum", [x], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / MODEL_FILE
    onnx.save(model, str(path))
    card = replace(
        card_for("sum", 1, path, size=(4, 4, 3)),
        inputs=[TensorSpec("pixels", "FP32", [-1, 4, 4, 3])],
        outputs=[TensorSpec("total", "FP32", [-1])],
    )
    seen: list[BatchStats] = []
    options = replace(CPU_ONLY, dynamic_batching=False, on_batch=lambda _, __, s: seen.append(s))
    runtime = ModelRuntime(card, path.read_bytes(), options)
    runtime.warm_up()
    assert seen == []  # the warm-up is no batch in the metrics
    ones = np.ones((2, 4, 4, 3), np.float32)
    assert asyncio.run(runtime.infer(ones))["total"].tolist() == [48.0, 48.0]
    assert [(s.rows, s.requests) for s in seen] == [(2, 1)]
    runtime.close()


@pytest.mark.parametrize("dynamic_batching", [True, False], ids=["batched", "one-run-each"])
def test_concurrent_infer_calls_each_get_their_own_rows(
    tmp_path: Path, dynamic_batching: bool
) -> None:
    seen: list[tuple[str, int, BatchStats]] = []

    def observe(name: str, version: int, stats: BatchStats) -> None:
        seen.append((name, version, stats))

    options = replace(
        CPU_ONLY, dynamic_batching=dynamic_batching, max_batch_delay_ms=20, on_batch=observe
    )
    runtime = tiny_runtime(tmp_path, options)
    parts = [IMAGES[:1], IMAGES[1:3], IMAGES[3:]]

    async def together() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(runtime.infer(p, outputs=["probabilities"]) for p in parts))

    answers = asyncio.run(together())
    for part, answer in zip(parts, answers, strict=True):
        assert list(answer) == ["probabilities"]
        np.testing.assert_allclose(answer["probabilities"], tiny_reference(part), atol=1e-5)
    assert {(name, version) for name, version, _ in seen} == {("tiny", 3)}
    assert sum(s.rows for _, _, s in seen) == len(IMAGES)  # every image counted once
    assert sum(s.requests for _, _, s in seen) == len(parts)
    if not dynamic_batching:
        assert len(seen) == len(parts)
    runtime.close()


def test_a_retired_runtime_serves_its_holders_then_closes(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path)
    assert runtime.acquire()
    runtime.release()
    assert not runtime.closed  # still the served version: it stays open between requests
    assert runtime.acquire() and runtime.acquire()
    runtime.retire()
    assert not runtime.closed  # two requests still hold it
    assert not runtime.acquire()  # a new request must look up the successor
    assert runtime.run(IMAGES[:1])["probabilities"].shape == (1, 10)
    runtime.release()
    assert not runtime.closed
    runtime.release()
    assert runtime.closed
    runtime.close()  # closing twice is harmless

    idle = tiny_runtime(tmp_path)
    idle.retire()
    assert idle.closed and not idle.acquire()


def test_the_image_shape_is_the_cards(tmp_path: Path) -> None:
    path = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(size=(8, 6, 3)), str(path))
    card: ModelCard = card_for("small", 1, path, size=(8, 6, 3))
    runtime = ModelRuntime(card, path.read_bytes(), CPU_ONLY)
    assert runtime.image_shape == (8, 6, 3)
    images = IMAGES[:2, :8, :6]
    np.testing.assert_allclose(
        runtime.run(images)["probabilities"], tiny_reference(images), atol=1e-5
    )
    runtime.close()


def test_warm_up_runs_each_batch_size_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """WARM_UP_BATCH_SIZES: a run of zeros per size (Triton's model_warmup), said in the log."""
    runtime = tiny_runtime(tmp_path, replace(CPU_ONLY, warm_up_batch_sizes=(1, 8, 8, 64)))
    with caplog.at_level("INFO", logger="service.engine.runtime"):
        runtime.warm_up()
    (line,) = [r.getMessage() for r in caplog.records if "warmed up" in r.getMessage()]
    assert "batch sizes 1, 8, 8, 64 in" in line
    runtime.close()


@pytest.mark.parametrize("mode", ["batched", "one-run-each", "inline"])
def test_tagged_requests_are_told_with_every_output_of_their_run(tmp_path: Path, mode: str) -> None:
    """``on_answered`` hears each tagged request under its tag, with its rows in its run's
    outputs (all of them, whatever the request asked), on every path; untagged ones are not
    told of, and an observer that raises fails no request."""
    told: list[tuple[str, int, list[tuple[str, int, int]], dict[str, np.ndarray]]] = []

    def observe(name: str, version: int, tagged: Any, outputs: Any, rows: Any) -> None:
        told.append((name, version, tagged, outputs))
        if "boom" in [tag for tag, _, _ in tagged]:
            raise RuntimeError("the observer broke")

    options = replace(
        CPU_ONLY,
        dynamic_batching=mode != "one-run-each",
        max_batch_delay_ms=20 if mode == "batched" else 0,
        inline_run_max_us=10_000 if mode == "inline" else 0,
        on_answered=observe,
    )
    runtime = tiny_runtime(tmp_path, options)
    runtime.warm_up()
    parts = [IMAGES[:1], IMAGES[1:3], IMAGES[3:]] if mode != "inline" else [IMAGES[:1]]
    tags = ["a", None, "boom"][: len(parts)] if mode != "inline" else ["boom"]

    async def together() -> list[dict[str, np.ndarray]]:
        calls = (runtime.infer(p, ["logits"], 0.0, t) for p, t in zip(parts, tags, strict=True))
        return list(await asyncio.gather(*calls))

    answers = asyncio.run(together())
    runtime.close()
    assert [list(answer) for answer in answers] == [["logits"]] * len(parts)  # despite it
    heard = {
        tag: (outputs, start, end) for *_, tagged, outputs in told for tag, start, end in tagged
    }
    assert sorted(heard) == sorted(t for t in tags if t is not None)
    assert all(name == "tiny" and version == 3 for name, version, _, _ in told)
    for part, tag in zip(parts, tags, strict=True):
        if tag is not None:
            outputs, start, end = heard[tag]
            assert set(outputs) >= {"probabilities", "logits"}
            got = outputs["probabilities"][start:end]
            np.testing.assert_allclose(got, tiny_reference(part), atol=1e-5)
    if mode == "batched":
        assert len(told) == 1  # one run, told once


@pytest.mark.parametrize("dynamic_batching", [True, False], ids=["batched", "one-run-each"])
@pytest.mark.parametrize(
    ("scheduling", "policy"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)]
)
def test_the_model_runs_on_a_thread_scheduled_as_configured(
    tmp_path: Path, dynamic_batching: bool, scheduling: ThreadScheduling, policy: int
) -> None:
    options = replace(CPU_ONLY, dynamic_batching=dynamic_batching, thread_scheduling=scheduling)
    runtime = tiny_runtime(tmp_path, options)
    policies: list[int] = []
    run = runtime.run

    def spy(images: Any, outputs: Any = None) -> dict[str, np.ndarray]:
        policies.append(os.sched_getscheduler(0))  # the thread running the model
        return run(images, outputs)

    runtime.run = spy  # type: ignore[method-assign]
    asyncio.run(runtime.infer(IMAGES[:2]))
    assert policies == [policy]
    runtime.close()
