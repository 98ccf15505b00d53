"""gRPC's messages for the statistics and model configuration extensions and the ``timeout``
request parameter, from the data plane's values (REST's JSON comes from the same values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tritonclient.grpc import model_config_pb2, service_pb2

from service.core.card import TensorSpec
from service.core.errors import InvalidInput
from service.core.timeouts import check_timeout_us
from service.dataplane.model_config import ModelConfig, version_policy_dict
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


def _config_tensor(kind: Any, spec: TensorSpec) -> Any:
    data_type = model_config_pb2.DataType.Value(f"TYPE_{spec.datatype}")
    return kind(name=spec.name, data_type=data_type, dims=spec.shape[1:])  # batch axis implied


def model_config_response(config: ModelConfig) -> Any:
    """``ModelConfigResponse``; what the message has no field for (class names, execution
    providers) goes in ``parameters`` as JSON strings."""
    message = model_config_pb2.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        input=[_config_tensor(model_config_pb2.ModelInput, t) for t in config.inputs],
        output=[_config_tensor(model_config_pb2.ModelOutput, t) for t in config.outputs],
        version_policy=model_config_pb2.ModelVersionPolicy(
            **version_policy_dict(config.version_policy)
        ),
        response_cache=model_config_pb2.ModelResponseCache(enable=config.response_cache),
        parameters={
            k: model_config_pb2.ModelParameter(string_value=v) for k, v in config.parameters.items()
        },
    )
    batching = config.dynamic_batching
    if batching is not None:
        message.dynamic_batching.CopyFrom(
            model_config_pb2.ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_size,
                max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                default_queue_policy=model_config_pb2.ModelQueuePolicy(
                    default_timeout_microseconds=batching.default_timeout_microseconds,
                    allow_timeout_override=True,
                    max_queue_size=batching.max_queue_size,
                ),
            )
        )
    return service_pb2.ModelConfigResponse(config=message)
