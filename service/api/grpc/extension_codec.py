"""gRPC's messages for the statistics and model configuration extensions and the ``timeout``
request parameter, from the data plane's values (REST's JSON comes from the same values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tritonclient.grpc import service_pb2

from service.api.model_config_wire import model_config_message
from service.core.errors import InvalidInput
from service.core.timeouts import check_timeout_us
from service.dataplane.model_config import ModelConfig
from service.engine.statistics import Duration, VersionStatistics


def timeout_parameter(parameters: Any) -> int:
    """``parameters["timeout"]`` of a ``ModelInferRequest`` in microseconds (0: none given)."""
    if "timeout" not in parameters:
        return 0
    parameter = parameters["timeout"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"parameter 'timeout' must be an int64_param, not {kind}")
    return check_timeout_us(getattr(parameter, kind))


def _duration(value: Duration) -> Any:
    return service_pb2.StatisticDuration(count=value.count, ns=value.ns)


def statistics_response(stats: Sequence[VersionStatistics]) -> Any:
    """``ModelStatisticsResponse``: one ``ModelStatistics`` per version."""
    return service_pb2.ModelStatisticsResponse(
        model_stats=[
            service_pb2.ModelStatistics(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=service_pb2.InferStatistics(
                    **{key: _duration(d) for key, d in s.durations.items()}
                ),
                batch_stats=[
                    service_pb2.InferBatchStatistics(
                        batch_size=b.batch_size,
                        compute_input=_duration(b.compute_input),
                        compute_infer=_duration(b.compute_infer),
                        compute_output=_duration(b.compute_output),
                    )
                    for b in s.batch_stats
                ],
            )
            for s in stats
        ]
    )


def model_config_response(config: ModelConfig) -> Any:
    """``ModelConfigResponse``; what the message has no field for (class names, execution
    providers) goes in ``parameters`` as JSON strings."""
    return service_pb2.ModelConfigResponse(config=model_config_message(config))
