"""config.pbtxt read as Triton reads it: the fields served, and hostile or unhonoured files
refused with the field named (never a crash, never a different model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core.card import TensorSpec
from service.core.errors import InvalidConfig
from service.core.version_policy import VersionPolicy
from service.engine.batching_options import ConfigOverride
from service.engine.triton_config import (
    CONFIG_PBTXT,
    MAX_CONFIG_BYTES,
    MAX_LABELS_BYTES,
    parse_config,
    read_config,
)

# Triton's own sample (docs/examples/model_repository/simple), as an ONNX graph.
SIMPLE = b"""
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""

CIFAR = b"""
name: "cifar"
backend: "onnxruntime"
max_batch_size: 64
version_policy: { latest { num_versions: 2 } }
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4, 16 ]
  max_queue_delay_microseconds: 2000
  default_queue_policy { max_queue_size: 512 }
}
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


def test_triton_simple_sample_reads_with_the_batch_axis_in_front() -> None:
    config = parse_config(SIMPLE, "simple")
    assert config.name == "simple" and config.max_batch_size == 8
    assert [t.spec for t in config.inputs] == [
        TensorSpec("INPUT0", "INT32", [-1, 16]),
        TensorSpec("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t.spec.name for t in config.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert config.version_policy is None  # the server's VERSION_POLICY
    assert config.batching == ConfigOverride(max_batch_size=8)  # no dynamic_batching block
    assert config.class_names == ()


def test_an_image_classifier_config_reads_every_field_it_sets() -> None:
    config = parse_config(CIFAR, "cifar")
    assert config.inputs[0].format == "FORMAT_NHWC"
    assert config.inputs[0].spec == TensorSpec("images", "UINT8", [-1, 32, 32, 3])
    assert [t.label_filename for t in config.outputs] == ["labels.txt", ""]
    assert config.version_policy == VersionPolicy("latest", num_versions=2)
    assert config.batching == ConfigOverride(
        max_batch_size=64,
        dynamic_batching=True,
        preferred_batch_size=(4, 16),
        max_queue_delay_microseconds=2000,
        max_queue_size=512,
    )
    assert "count 2" in config.notes[0]  # accepted, with what it means here


def test_dims_without_max_batch_size_are_the_whole_shape() -> None:
    text = SIMPLE.replace(b"max_batch_size: 8", b"max_batch_size: 0").replace(
        b"[ 16 ]", b"[ 4, -1 ]"
    )
    config = parse_config(text, "simple")
    assert config.inputs[0].spec.shape == [4, -1]
    assert config.batching == ConfigOverride()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (b"{ all { } }", VersionPolicy("all")),
        (b"{ specific { versions: [ 3, 1 ] } }", VersionPolicy("specific", versions=(1, 3))),
        (b"{ latest { } }", None),  # num_versions 0: refused below
    ],
)
def test_version_policies_are_the_services_own(policy: bytes, expected: VersionPolicy) -> None:
    text = SIMPLE + b"version_policy: " + policy
    if expected is None:
        with pytest.raises(InvalidConfig, match="num_versions must be >= 1"):
            parse_config(text, "simple")
    else:
        assert parse_config(text, "simple").version_policy == expected


def test_every_datatype_maps_through_the_one_table() -> None:
    text = SIMPLE.replace(b"TYPE_INT32", b"TYPE_FP32", 1)
    assert parse_config(text, "simple").inputs[0].spec.datatype == "FP32"
    with pytest.raises(InvalidConfig, match="data_type TYPE_BF16 is not served here"):
        parse_config(SIMPLE.replace(b"TYPE_INT32", b"TYPE_BF16", 1), "simple")
    with pytest.raises(InvalidConfig, match="data_type TYPE_INVALID"):
        parse_config(SIMPLE.replace(b"data_type: TYPE_INT32 ", b"", 1), "simple")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"\x00\xff garbage", "not UTF-8 text"),
        (b"{{{ name", "cannot be parsed"),
        (b'name: "simple" unknown_field: 1', 'has no field named "unknown_field"'),
        (b'name: "simple" name: "simple"', 'multiple "name" fields'),
        (b"max_batch_size: 99999999999", "cannot be parsed"),
        (b"max_batch_size: -1", "max_batch_size -1 is negative"),
        (b'name: "other"', "unexpected directory name 'simple' for model 'other'"),
        (b'platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served here"),
        (b'backend: "python"', "backend 'python' is not served here"),
        (b'default_model_filename: "model.plan"', "default_model_filename 'model.plan'"),
        (b'runtime: "model.py"', "runtime 'model.py' is not supported"),
        (b'ensemble_scheduling { step [ { model_name: "a" } ] }', "'ensemble_scheduling'"),
        (b"sequence_batching { }", "'sequence_batching' is not supported here: there is no"),
        (b"instance_group [ { kind: KIND_GPU } ]", "instance_group[0].kind KIND_GPU: no GPU"),
        (b"instance_group [ { kind: KIND_CPU }, { gpus: [ 0 ] } ]", "instance_group[1].gpus"),
        (b"instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL is not supported"),
        (b"model_transaction_policy { decoupled: true }", "decoupled models"),
        (b'parameters { key: "x" value { string_value: "1" } }', "'parameters'"),
        (b"response_cache { enable: true }", "RESPONSE_CACHE setting"),
        (b'input [ { name: "a" data_type: TYPE_FP32 dims: [ 1 ] reshape { } } ]', "input[0]"),
        (b"dynamic_batching { priority_levels: 2 }", "'dynamic_batching.priority_levels'"),
        (b"optimization { graph { level: 1 } }", "GRAPH_OPTIMIZATION_LEVEL"),
        (b'input [ { name: "a" data_type: TYPE_FP32 dims: [ 0 ] } ]', "must be -1 or positive"),
        (b'input [ { name: "a" data_type: TYPE_FP32 dims: [ -2 ] } ]', "must be -1 or positive"),
        (b"input [ { data_type: TYPE_FP32 dims: [ 1 ] } ]", "input[0] has no name"),
        (
            b'input [ { name: "a" data_type: TYPE_FP32 dims: [ ' + b"1, " * 16 + b"1 ] } ]",
            "at most 16 axes",
        ),
        (
            b'input [ { name: "a" data_type: TYPE_FP32 }, { name: "a" data_type: TYPE_FP32 } ]',
            "repeat a name",
        ),
        (b'output [ { name: "a" data_type: TYPE_FP32 label_filename: "../x" } ]', "a file name"),
        (
            b'output [ { name: "a" data_type: TYPE_FP32 label_filename: "a.txt" },'
            b' { name: "b" data_type: TYPE_FP32 label_filename: "b.txt" } ]',
            "different label",
        ),
    ],
)
def test_hostile_and_unhonoured_configs_are_refused_naming_the_field(
    text: bytes, reason: str
) -> None:
    with pytest.raises(InvalidConfig, match=r"config\.pbtxt") as raised:
        parse_config(text, "simple")
    assert reason in raised.value.message


def test_a_gpu_instance_group_is_accepted_where_a_gpu_serves() -> None:
    text = SIMPLE + b"instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]"
    assert parse_config(text, "simple", gpu_host=True).name == "simple"


def test_a_huge_config_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    folder = tmp_path / "simple"
    folder.mkdir()
    (folder / CONFIG_PBTXT).write_bytes(SIMPLE + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(InvalidConfig, match=f"over {MAX_CONFIG_BYTES} bytes"):
        read_config(folder)


def test_no_config_is_none_and_labels_are_read_one_per_line(tmp_path: Path) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    assert read_config(folder) is None
    (folder / CONFIG_PBTXT).write_bytes(CIFAR)
    (folder / "labels.txt").write_text("airplane\nautomobile\n")
    config = read_config(folder)
    assert config is not None
    assert config.class_names == ("airplane", "automobile")
    assert len(config.signature) == 2  # config.pbtxt and labels.txt: either changing reloads


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (None, "label file 'labels.txt' cannot be read"),
        (b"", "label file 'labels.txt' is empty"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"x\n" * (MAX_LABELS_BYTES // 2 + 1), f"over {MAX_LABELS_BYTES} bytes"),
    ],
)
def test_a_bad_labels_file_is_refused(tmp_path: Path, labels: bytes | None, reason: str) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / CONFIG_PBTXT).write_bytes(CIFAR)
    if labels is not None:
        (folder / "labels.txt").write_bytes(labels)
    with pytest.raises(InvalidConfig, match=reason):
        read_config(folder)


def test_files_linking_out_of_the_model_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "labels.txt").write_text("a\n")
    (outside / CONFIG_PBTXT).write_bytes(CIFAR)
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / CONFIG_PBTXT).write_bytes(CIFAR)
    os.symlink(outside / "labels.txt", folder / "labels.txt")
    with pytest.raises(InvalidConfig, match="links outside its model folder"):
        read_config(folder)
    (folder / CONFIG_PBTXT).unlink()
    os.symlink(outside / CONFIG_PBTXT, folder / CONFIG_PBTXT)
    with pytest.raises(InvalidConfig, match=r"config\.pbtxt links outside"):
        read_config(folder)


def test_a_fifo_in_place_of_the_config_is_refused_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "simple"
    folder.mkdir()
    os.mkfifo(folder / CONFIG_PBTXT)
    with pytest.raises(InvalidConfig, match="not a regular file"):
        read_config(folder)
