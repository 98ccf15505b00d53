"""A load's config override is read on the loop only when short: protobuf builds a message per
JSON object, and 64 kB of empty ``input`` objects held the loop 50-58 ms (the seventh audit)."""

from __future__ import annotations

import json

import pytest

from service.api import config_override
from service.core.errors import ModelLoadFailed
from service.dataplane.model_config import ModelConfig
from service.engine.work_pool import WorkPool, on_event_loop


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def not_loaded() -> ModelConfig:
    raise AssertionError("only max_batch_size is sent: nothing in force is read")


@pytest.mark.anyio
async def test_a_long_override_is_read_on_the_pool_and_a_short_one_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where: list[bool] = []
    parse = config_override.parse_config_override

    def recorded(name: str, text: object, current: object) -> object:
        where.append(on_event_loop())
        return parse(name, text, current)  # type: ignore[arg-type]

    monkeypatch.setattr(config_override, "parse_config_override", recorded)
    short = json.dumps({"max_batch_size": 8})
    long = short + " " * config_override.LIGHT_CONFIG_CHARS  # the same JSON, padded
    pool = WorkPool(threads=1, max_waiting=0)
    try:
        read = [
            await config_override.read_config_override(pool, "m", text, not_loaded)
            for text in (short, long)
        ]
        with pytest.raises(ModelLoadFailed, match="config override"):
            await config_override.read_config_override(pool, "m", long + "x", not_loaded)
    finally:
        pool.close()
    assert where == [True, False, False]
    assert read[0] == read[1] and read[0].max_batch_size == 8


def test_docs_example_loads_a_model_that_is_not_loaded() -> None:
    """docs/api.md's override changes only what may change, so nothing in force is needed: it
    was a 400 on an unloaded model, its emptied dynamic_batching block left as a fixed field
    (the eleventh audit: 156 of 981 loads racing unloads)."""
    example = {
        "max_batch_size": 8,
        "dynamic_batching": {
            "preferred_batch_size": [8],
            "max_queue_delay_microseconds": 500,
            "default_queue_policy": {"max_queue_size": 16},
        },
    }
    read = config_override.parse_config_override("m", json.dumps(example), not_loaded)
    assert read.max_batch_size == 8 and read.dynamic_batching
    assert read.preferred_batch_size == (8,) and read.max_queue_delay_microseconds == 500
    assert read.max_queue_size == 16


@pytest.mark.parametrize(
    "text",
    [
        '{"max_batch_size": 8, "\\ud800": 1}',  # an unknown key
        '{"max_batch_size": 8, "version_policy": {"specific": {"versions": ["\\ud800"]}}}',
        '{"input": [{"name": "images", "data_type": "\\udfff"}]}',
    ],
)
def test_a_lone_surrogate_in_an_override_is_a_400_not_a_500(text: str) -> None:
    """protobuf's JSON parser raised SystemError on a lone surrogate's escape: a 500 with a
    logged traceback for each admin call (a review)."""
    with pytest.raises(ModelLoadFailed, match="surrogate"):
        config_override.parse_config_override("m", text, not_loaded)
