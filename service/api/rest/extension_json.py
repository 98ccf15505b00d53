"""REST's JSON for the statistics and model configuration extensions, in Triton's shapes, from
the data plane's values (gRPC's messages come from the same values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.core.card import TensorSpec
from service.dataplane.model_config import ModelConfig, version_policy_dict
from service.engine.statistics import Duration, VersionStatistics


def _duration(value: Duration) -> dict[str, int]:
    return {"count": value.count, "ns": value.ns}


def statistics_json(stats: Sequence[VersionStatistics]) -> dict[str, Any]:
    """``{"model_stats": [...]}``, Triton's statistics response."""
    return {
        "model_stats": [
            {
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {k: _duration(d) for k, d in s.durations.items()},
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": b.batch_size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for b in s.batch_stats
                ],
                "memory_usage": [],
            }
            for s in stats
        ]
    }


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": spec.shape[1:]}


def model_config_json(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration as JSON (its protobuf's field names, enums by name)."""
    body: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "version_policy": version_policy_dict(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(t) for t in config.inputs],
        "output": [_tensor(t) for t in config.outputs],
        "response_cache": {"enable": config.response_cache},
        "parameters": {k: {"string_value": v} for k, v in config.parameters.items()},
    }
    batching = config.dynamic_batching
    if batching is not None:
        body["dynamic_batching"] = {
            "preferred_batch_size": batching.preferred_batch_size,
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "default_queue_policy": {
                "default_timeout_microseconds": batching.default_timeout_microseconds,
                "allow_timeout_override": True,
                "max_queue_size": batching.max_queue_size,
            },
        }
    return body
