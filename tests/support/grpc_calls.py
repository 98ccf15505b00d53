"""gRPC messages the reliability tests send: one image of zeros for the ``tiny`` test model."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2


def infer_request(model: str = "tiny") -> Any:
    """A ``ModelInferRequest`` of one 32x32x3 UINT8 image of zeros, as raw bytes."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=[1, 32, 32, 3]
    )
    message = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor])
    message.raw_input_contents.append(bytes(32 * 32 * 3))
    return message
