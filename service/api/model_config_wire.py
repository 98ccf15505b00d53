"""Triton's model configuration on the wire: one JSON encoding of the data plane's
``ModelConfig`` in Triton's shape (its protobuf's field names, enums by name, the defaults
Triton prints too), which REST returns and gRPC parses into ``ModelConfig``, so the two agree."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.dataplane.model_config import ConfigTensor, ModelConfig, version_policy_dict

# What Triton fills in when a config leaves it out; "pinned memory" is off: nothing here pins.
OPTIMIZATION = {
    "priority": "PRIORITY_DEFAULT",
    "input_pinned_memory": {"enable": False},
    "output_pinned_memory": {"enable": False},
    "gather_kernel_buffer_threshold": 0,
    "eager_batching": False,
}


def _input(t: ConfigTensor) -> dict[str, Any]:
    return {
        "name": t.spec.name,
        "data_type": f"TYPE_{t.spec.datatype}",
        "format": t.format,
        "dims": t.dims,  # the batch axis is implied by max_batch_size > 0
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }


def _output(t: ConfigTensor) -> dict[str, Any]:
    return {
        "name": t.spec.name,
        "data_type": f"TYPE_{t.spec.datatype}",
        "dims": t.dims,
        "label_filename": t.label_filename,
        "is_shape_tensor": False,
        "is_non_linear_format_io": False,
    }


def _dynamic_batching(config: ModelConfig) -> dict[str, Any]:
    batching = config.dynamic_batching
    if batching is None:
        return {}
    return {
        "dynamic_batching": {
            "preferred_batch_size": batching.preferred_batch_size,
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": batching.default_timeout_microseconds,
                "allow_timeout_override": True,
                "max_queue_size": batching.max_queue_size,
            },
            "priority_queue_policy": {},
        }
    }


def _warmup(config: ModelConfig) -> list[dict[str, Any]]:
    """Triton's ``model_warmup``: one run of zeros per batch size (WARM_UP_BATCH_SIZES)."""
    zeros = {
        t.spec.name: {
            "data_type": f"TYPE_{t.spec.datatype}",
            "dims": t.dims,
            "zero_data": True,
        }
        for t in config.inputs
    }
    return [
        {"name": f"zeros_batch_{size}", "batch_size": size, "inputs": zeros, "count": 1}
        for size in config.warm_up_batch_sizes
    ]


def model_config_dict(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration as JSON, in the order and with the defaults Triton prints."""
    group = config.instance_group
    return {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "runtime": "",
        "version_policy": version_policy_dict(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": [_input(t) for t in config.inputs],
        "output": [_output(t) for t in config.outputs],
        "batch_input": [],
        "batch_output": [],
        "optimization": OPTIMIZATION,
        **_dynamic_batching(config),
        "instance_group": [
            {
                "name": config.name,
                "kind": group.kind,
                "count": group.count,
                "gpus": group.gpus,
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {k: {"string_value": v} for k, v in config.parameters.items()},
        "model_warmup": _warmup(config),
        "response_cache": {"enable": config.response_cache},
    }


def model_config_message(config: ModelConfig) -> Any:
    """gRPC's ``ModelConfig``: the same JSON, parsed (so no field can differ from REST's)."""
    return json_format.ParseDict(model_config_dict(config), model_config_pb2.ModelConfig())
