"""A load's config override (Triton's ``load`` with ``parameters.config``): the batching fields
this service can change for one load, checked against the server's limits and turned into the
model's runtime options. The wire's JSON is parsed by the adapters (``api/config_override.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from service.core.errors import InvalidInput, ModelLoadFailed
from service.engine.runtime import RuntimeOptions

MAX_QUEUE_DELAY_US = 1_000_000  # MAX_BATCH_DELAY_MS's bound, one second
MAX_QUEUE_SIZE = 1_000_000  # images


@dataclass(frozen=True)
class ConfigOverride:
    """The fields a load may change; None: as the settings say."""

    max_batch_size: int | None = None  # rows one request may carry (at most MAX_IMAGES_PER_REQUEST)
    dynamic_batching: bool = False  # the override has a dynamic_batching block
    preferred_batch_size: tuple[int, ...] = ()  # the largest is the batcher's rows per run
    max_queue_delay_microseconds: int | None = None
    max_queue_size: int | None = None  # images waiting before a 503


def _failed(name: str, why: str) -> ModelLoadFailed:
    return ModelLoadFailed(f"load failed for model {name!r}: config override: {why}")


def override_options(name: str, override: ConfigOverride, base: RuntimeOptions) -> RuntimeOptions:
    """``base`` (from the settings) with ``override`` applied; ``ModelLoadFailed`` (400) naming
    the field when a value is out of this server's bounds."""
    limit = base.max_images_per_request
    rows = limit if override.max_batch_size is None else override.max_batch_size
    if not 1 <= rows <= limit:
        raise _failed(
            name,
            f"max_batch_size {rows} is out of range: 1 to MAX_IMAGES_PER_REQUEST ({limit}); "
            "0 (no batch axis) does not fit these models, whose inputs have one",
        )
    run = min(base.max_batch_size, rows)
    if override.preferred_batch_size:
        bad = [b for b in override.preferred_batch_size if not 1 <= b <= rows]
        if bad:
            raise _failed(
                name, f"preferred_batch_size {bad} must be within 1 to max_batch_size {rows}"
            )
        run = max(override.preferred_batch_size)
    delay_us = override.max_queue_delay_microseconds
    if delay_us is not None and delay_us > MAX_QUEUE_DELAY_US:
        raise _failed(name, f"max_queue_delay_microseconds {delay_us} is over {MAX_QUEUE_DELAY_US}")
    queue = override.max_queue_size
    if queue is not None and not 1 <= queue <= MAX_QUEUE_SIZE:
        raise _failed(name, f"max_queue_size {queue} must be within 1 to {MAX_QUEUE_SIZE}")
    return replace(
        base,
        max_images_per_request=rows,
        max_batch_size=run,
        dynamic_batching=base.dynamic_batching or override.dynamic_batching,
        max_batch_delay_ms=base.max_batch_delay_ms if delay_us is None else delay_us / 1000,
        max_queue_images=base.max_queue_images if queue is None else queue,
    )


def check_load_parameters(names: Iterable[str]) -> None:
    """Load's ``file:`` overrides are refused: versions come from the repository."""
    overrides = sorted(k for k in names if str(k).startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"parameters {overrides} are not supported: publish the version into the repository"
        )
