"""REST's JSON for the statistics and model configuration extensions, in Triton's shapes, from
the data plane's values (gRPC's messages come from the same values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.api.model_config_wire import model_config_dict
from service.dataplane.model_config import ModelConfig
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


def model_config_json(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration as JSON (the encoding gRPC's message is parsed from)."""
    return model_config_dict(config)
