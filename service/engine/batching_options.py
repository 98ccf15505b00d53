"""The batching fields of a model's configuration (a ``config.pbtxt`` or a load's config
override) applied to the runtime options, checked against the server's limits: one rule for both,
so a file and an override that say the same thing give the same model."""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.core.errors import InvalidConfig
from service.engine.runtime import RuntimeOptions

MAX_QUEUE_DELAY_US = 1_000_000  # MAX_BATCH_DELAY_MS's bound, one second
MAX_QUEUE_SIZE = 1_000_000  # images


# What a configuration changes in the runtime options (a worker group's copies record them)
BATCHING_FIELDS = (
    "dynamic_batching",
    "max_batch_size",
    "max_batch_delay_ms",
    "max_queue_images",
    "max_images_per_request",
)


@dataclass(frozen=True)
class ConfigOverride:
    """The fields a configuration may change; None: as the settings say."""

    max_batch_size: int | None = None  # rows one request may carry (at most MAX_IMAGES_PER_REQUEST)
    dynamic_batching: bool = False  # the configuration has a dynamic_batching block
    preferred_batch_size: tuple[int, ...] = ()  # the largest is the batcher's rows per run
    max_queue_delay_microseconds: int | None = None
    max_queue_size: int | None = None  # images waiting before a 503


def batching_options(override: ConfigOverride, base: RuntimeOptions) -> RuntimeOptions:
    """``base`` (from the settings) with ``override`` applied; ``InvalidConfig`` naming the field
    when a value is out of this server's bounds."""
    limit = base.max_images_per_request
    rows = limit if override.max_batch_size is None else override.max_batch_size
    if not 1 <= rows <= limit:
        raise InvalidConfig(
            f"max_batch_size {rows} is out of range: 1 to MAX_IMAGES_PER_REQUEST ({limit}); "
            "0 (no batch axis) does not fit these models, whose inputs have one"
        )
    run = min(base.max_batch_size, rows)
    if override.preferred_batch_size:
        bad = [b for b in override.preferred_batch_size if not 1 <= b <= rows]
        if bad:
            raise InvalidConfig(
                f"preferred_batch_size {bad} must be within 1 to max_batch_size {rows}"
            )
        run = max(override.preferred_batch_size)
    delay_us = override.max_queue_delay_microseconds
    if delay_us is not None and delay_us > MAX_QUEUE_DELAY_US:
        raise InvalidConfig(f"max_queue_delay_microseconds {delay_us} is over {MAX_QUEUE_DELAY_US}")
    queue = override.max_queue_size
    if queue is not None and not 1 <= queue <= MAX_QUEUE_SIZE:
        raise InvalidConfig(f"max_queue_size {queue} must be within 1 to {MAX_QUEUE_SIZE}")
    return replace(
        base,
        max_images_per_request=rows,
        max_batch_size=run,
        dynamic_batching=base.dynamic_batching or override.dynamic_batching,
        max_batch_delay_ms=base.max_batch_delay_ms if delay_us is None else delay_us / 1000,
        max_queue_images=base.max_queue_images if queue is None else queue,
    )
