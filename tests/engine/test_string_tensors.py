"""ONNX string tensors (the protocol's BYTES) in the runtime: object arrays of ``str`` in and out,
warmed up without a failure, joined by the batcher and split back per request."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from service.engine.named_rows import NamedRows
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import load_version
from tests.support.datatype_models import STRINGS, datatype_repository

OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",), warm_up_batch_sizes=(1, 4))


def test_a_graph_reading_strings_as_numbers_warms_up_and_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = datatype_repository(tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger="service.engine.runtime"):
        _, runtime, _ = load_version(STRINGS, 1, repo / STRINGS / "1", OPTIONS)
    try:
        assert "warm-up" not in caplog.text  # "0" is text a Cast reads; "" would fail the run

        def strings(values: range) -> np.ndarray:
            return np.array([[str(v)] * 16 for v in values], dtype=object)

        async def both() -> list[dict[str, np.ndarray]]:
            requests = [
                NamedRows({"INPUT0": strings(range(n, n + 2)), "INPUT1": strings(range(2))}, 2)
                for n in (10, 20, 30)
            ]
            return await asyncio.gather(*(runtime.infer(r) for r in requests))

        for n, answer in zip((10, 20, 30), asyncio.run(both()), strict=True):
            assert answer["OUTPUT0"].dtype == object
            assert answer["OUTPUT0"][:, 0].tolist() == [str(n), str(n + 2)]
            assert answer["OUTPUT1"][:, 0].tolist() == [str(n), str(n)]
    finally:
        runtime.close()
