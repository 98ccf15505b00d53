"""An answered gRPC request lets go of its message: grpc's request iterator keeps the last
message it gave in a reference cycle with the call's state until the cycle collector runs, which
counts objects, not bytes, so ten failed 60 MiB ``ModelInfer`` calls held 676 MB and a compressed
one 60 MB for 60 kB sent. A real ``grpc.aio`` server in this process (so its objects can be
counted), the collector off while the calls run."""

from __future__ import annotations

import gc
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.grpc.handlers import SizedRequest
from tests.support.apps import make_settings
from tests.support.grpc_app import grpc_in_process
from tests.support.models import make_model_repo

pytestmark = pytest.mark.anyio
PIXELS = np.zeros((8, 32, 32, 3), dtype=np.uint8).tobytes()  # 24 kB, over the parsed-at-once size


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def infer(shape: list[int], model: str = "tiny") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="images", datatype="UINT8")
    tensor.shape.extend(shape)
    request.raw_input_contents.append(PIXELS)
    return request


def held() -> list[SizedRequest]:
    """Requests still holding their bytes or message (gc tracks the cycles it has not freed)."""
    return [
        o for o in gc.get_objects() if type(o) is SizedRequest and (o.data or o.message is not None)
    ]


async def test_answered_and_refused_requests_hold_no_message_until_a_collection(
    tmp_path: Path,
) -> None:
    async with grpc_in_process(make_settings(make_model_repo(tmp_path))) as (address, _):
        gc.collect()
        gc.disable()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                answered = await stub.ModelInfer(infer([8, 32, 32, 3]))
                assert answered.outputs
                for shape, model in (([8, 3, 32, 32], "tiny"), ([8, 32, 32, 3], "nope")):
                    for _ in range(5):  # wrong shape: INVALID_ARGUMENT; no such model: NOT_FOUND
                        with pytest.raises(grpc.aio.AioRpcError):
                            await stub.ModelInfer(infer(shape, model))
                replies = [r async for r in stub.ModelStreamInfer(iter([infer([8, 32, 32, 3])]))]
                assert len(replies) == 1 and not replies[0].error_message
            assert held() == []
        finally:
            gc.enable()
