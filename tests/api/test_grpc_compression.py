"""Compressed gRPC messages: refused before they are inflated unless ``GRPC_COMPRESSION`` (60 kB
of gzip inflated to 60 MB, 0.3 s of the server's CPU for 60 kB sent); accepted as Triton does
with it. tritonclient's ``compression_algorithm`` against a real in-process server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.support.apps import make_settings
from tests.support.grpc_app import grpc_in_process
from tests.support.models import make_model_repo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def infer(address: str, compression: str | None) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(address)
    tensor = triton_grpc.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    try:
        answer = client.infer("tiny", [tensor], compression_algorithm=compression)
        return answer.as_numpy("probabilities")
    finally:
        client.close()


async def test_compressed_messages_are_refused_by_default_and_plain_ones_served(
    tmp_path: Path,
) -> None:
    async with grpc_in_process(make_settings(make_model_repo(tmp_path))) as (address, _):
        assert (await asyncio.to_thread(infer, address, None)).shape[0] == 1
        for algorithm in ("gzip", "deflate"):
            with pytest.raises(InferenceServerException, match=r"UNIMPLEMENTED.*disabled"):
                await asyncio.to_thread(infer, address, algorithm)


async def test_grpc_compression_accepts_them_as_triton_does(tmp_path: Path) -> None:
    settings = make_settings(make_model_repo(tmp_path), grpc_compression=True)
    async with grpc_in_process(settings) as (address, _):
        plain = await asyncio.to_thread(infer, address, None)
        for algorithm in ("gzip", "deflate"):
            np.testing.assert_array_equal(await asyncio.to_thread(infer, address, algorithm), plain)
