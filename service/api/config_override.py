"""Load's ``parameters.config``, Triton's JSON model configuration, read with Triton's own
``model_config.proto`` (as Triton reads it): bad JSON, an unknown field, a wrong type or a
negative count is refused. ``max_batch_size`` and ``dynamic_batching``'s preferred sizes, queue
delay and queue size may change; any other field sent must equal the configuration in force
(so a config fetched with ``get_model_config``, edited and sent back, loads)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from service.api.model_config_wire import model_config_message
from service.core.errors import ModelLoadFailed, ServingError
from service.dataplane.config_override import ConfigOverride
from service.dataplane.model_config import ModelConfig
from service.engine.work_pool import WorkPool

MAX_CONFIG_CHARS = 65_536  # a config.pbtxt's JSON is a few KiB
LIGHT_CONFIG_CHARS = 4_096  # read on the loop; 64 kB of empty inputs took 50-58 ms there


def _failed(name: str, why: str) -> ModelLoadFailed:
    return ModelLoadFailed(f"load failed for model {name!r}: config override: {why}")


def _difference(given: Message, ours: Message, path: str = "") -> str | None:
    """The first field set in ``given`` whose value is not ``ours`` (None: all agree)."""
    for field, value in given.ListFields():
        where, mine = f"{path}{field.name}", getattr(ours, field.name)
        entry = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.message_type is None or entry:
            same = dict(value) == dict(mine) if entry else value == mine
            if not same:
                return where
        elif not field.is_repeated:
            if not ours.HasField(field.name):  # a block this model has none of
                return where
            found = _difference(value, mine, where + ".")
            if found:
                return found
        elif len(value) != len(mine):
            return where
        else:
            for i, (a, b) in enumerate(zip(value, mine, strict=True)):
                found = _difference(a, b, f"{where}[{i}].")
                if found:
                    return found
    return None


def _fixed_part(message: Any) -> Any:
    """``message`` without the fields a load may change."""
    fixed = model_config_pb2.ModelConfig()
    fixed.CopyFrom(message)
    fixed.ClearField("max_batch_size")
    if fixed.HasField("dynamic_batching"):
        batching = fixed.dynamic_batching
        batching.ClearField("preferred_batch_size")
        batching.ClearField("max_queue_delay_microseconds")
        if batching.HasField("default_queue_policy"):
            batching.default_queue_policy.ClearField("max_queue_size")
            if not batching.default_queue_policy.ListFields():
                batching.ClearField("default_queue_policy")
        if not batching.ListFields():  # only what may change: nothing fixed to compare
            fixed.ClearField("dynamic_batching")
    return fixed


def _check_fixed(name: str, message: Any, current: Callable[[], ModelConfig]) -> None:
    fixed = _fixed_part(message)
    if not fixed.ListFields():
        return
    try:
        config = current()
    except ServingError:  # not loaded: nothing in force to hold the other fields to
        field = fixed.ListFields()[0][0].name
        raise _failed(name, f"{field!r} cannot be checked while the model is not loaded") from None
    ours = _fixed_part(model_config_message(config))
    where = _difference(fixed, ours)
    if where:
        raise _failed(
            name,
            f"{where!r} differs from the configuration in force, and only max_batch_size and "
            "dynamic_batching (preferred_batch_size, max_queue_delay_microseconds, "
            "max_queue_size) can change at load here",
        )


def _given(data: dict[str, Any], *names: str) -> bool:
    """Whether the JSON names the field (protobuf's JSON takes either spelling)."""
    return any(data.get(n) is not None for n in names)


def parse_config_override(
    name: str, text: object, current: Callable[[], ModelConfig]
) -> ConfigOverride:
    """The override in ``text``; ``ModelLoadFailed`` (400) saying why it cannot be used.
    ``current``: the configuration in force (``ServingError`` when the model is not loaded)."""
    if not isinstance(text, str):
        raise _failed(name, "parameters.config must be a string of JSON")
    if len(text) > MAX_CONFIG_CHARS:
        raise _failed(name, f"{len(text)} characters, more than {MAX_CONFIG_CHARS}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _failed(name, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _failed(name, "must be a JSON object")
    try:  # protobuf's parser raised SystemError (a 500) on a lone surrogate's escape
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        raise _failed(name, "holds a lone surrogate (a \\ud800 escape): no text") from None
    try:
        message = json_format.ParseDict(data, model_config_pb2.ModelConfig())
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _failed(name, str(exc).splitlines()[0]) from None  # not the list of every field
    _check_fixed(name, message, current)
    batching = message.dynamic_batching
    policy = batching.default_queue_policy
    given = _given(data, "dynamic_batching", "dynamicBatching")
    return ConfigOverride(
        max_batch_size=message.max_batch_size
        if _given(data, "max_batch_size", "maxBatchSize")
        else None,
        dynamic_batching=given,
        preferred_batch_size=tuple(batching.preferred_batch_size),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds if given else None,
        max_queue_size=policy.max_queue_size or None,  # 0: Triton's "no limit"; the setting's
    )


async def read_config_override(
    work: WorkPool, name: str, text: object, current: Callable[[], ModelConfig]
) -> ConfigOverride:
    """``parse_config_override`` on the work pool unless ``text`` is short: protobuf builds a
    message per JSON object, so a long one holds the interpreter for tens of ms."""
    light = not isinstance(text, str) or len(text) <= LIGHT_CONFIG_CHARS
    return await work.run_here_if_light(light, parse_config_override, name, text, current)
