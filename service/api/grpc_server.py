"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside REST.

    python -m service        (REST on PORT, gRPC on GRPC_PORT, default 8001; -1: no gRPC)

A thin adapter like the REST routes: the messages are the protocol's published ones, compiled in
``tritonclient.grpc``; models, limits, metrics and errors are the app's ``ServiceState``, and
``ServingError`` statuses become gRPC codes in ``grpc_code``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import grpc
import numpy as np
from fastapi import FastAPI
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from service.api.admin import check_admin
from service.api.client_address import caller
from service.api.codec import DATATYPE_NAMES, tensor_from_parts
from service.api.grpc_handlers import Undecodable, method_handlers
from service.core.card import TensorSpec
from service.core.datatypes import DATATYPES
from service.core.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServingError,
    UnprocessableInput,
)
from service.core.limits import MAX_TENSORS, check_tensor_count
from service.dataplane.dataplane import DataPlane, request_scope
from service.dataplane.types import InferRequest, InputTensor, RequestedOutput
from service.settings import Settings

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"
EXTENSIONS = ["model_repository", "model_configuration"]

# The one place REST statuses become gRPC codes; anything else is INTERNAL, shown generically.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNPROCESSABLE_ENTITY: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    HTTPStatus.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
}

# Typed ``InferTensorContents`` field of each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELDS: dict[str, str] = {
    d.name: d.contents_field for d in DATATYPES.values() if d.contents_field is not None
}


def grpc_code(status: int) -> grpc.StatusCode:
    code: grpc.StatusCode = GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
    return code


def peer_host(peer: str) -> str | None:
    """The client's IP address from grpc's peer string (``ipv4:127.0.0.1:5555``,
    ``ipv6:[::1]:5555``, URL-quoted in some grpc versions); None for anything else."""
    kind, _, address = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return address.rpartition(":")[0].strip("[]") or None


Handler = Callable[["InferenceServicer", Any, Any], Awaitable[Any]]


def rpc(method: Handler) -> Handler:
    """Run a handler inside ``request_scope`` (the runtimes it takes stay open until it returns),
    count and time it, and turn its errors into gRPC status codes."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: InferenceServicer, request: Any, context: Any) -> Any:
        start = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            if isinstance(request, Undecodable):
                raise InvalidInput(f"the request is not a valid {request.message} message")
            with request_scope():
                return await method(self, request, context)
        except ServingError as exc:
            code = grpc_code(exc.status)
            message = exc.message
            if code is grpc.StatusCode.INTERNAL:
                log.error("gRPC %s failed", name, exc_info=exc)
                message = INTERNAL_MESSAGE
            elif exc.status >= 500 and not isinstance(exc.__cause__, ServingError):
                log.warning("gRPC %s: %s", name, exc.message)
        except Exception as exc:
            log.error("gRPC %s failed", name, exc_info=exc)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        finally:
            metrics = self.plane.metrics
            metrics.grpc_requests.labels(name, code.name).inc()
            metrics.grpc_latency.labels(name).observe(time.perf_counter() - start)
        await context.abort(code, message)

    return call


def _tensor_metadata(spec: TensorSpec) -> Any:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _config_tensor(kind: Any, spec: TensorSpec) -> Any:
    data_type = model_config_pb2.DataType.Value(f"TYPE_{spec.datatype}")
    return kind(name=spec.name, data_type=data_type, dims=spec.shape[1:])  # batch axis implied


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's calls on the shared ``ServiceState``; the others answer UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.plane.ready)

    @rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:
        # As Triton: an unknown or unready model is "not ready", not an error.
        try:
            self.plane.model(request.name, request.version or None)
        except (ModelNotFound, ModelNotReady):
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(**vars(DataPlane.server_metadata(EXTENSIONS)))

    @rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.model_metadata(request.name, request.version or None)
        return service_pb2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor_metadata(t) for t in meta.inputs],
            outputs=[_tensor_metadata(t) for t in meta.outputs],
        )

    @rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """Tensors, the batch limit, and what the metadata message has no room for: the class
        names and execution providers (as JSON strings in ``parameters``)."""
        meta = self.plane.model_metadata(request.name, request.version or None)
        parameters = {
            "class_names": json.dumps(meta.class_names),
            "execution_providers": json.dumps(meta.execution_providers),
        }
        config = model_config_pb2.ModelConfig(
            name=meta.name,
            platform=meta.platform,
            backend="onnxruntime",
            max_batch_size=self.plane.settings.max_images_per_request,
            input=[_config_tensor(model_config_pb2.ModelInput, t) for t in meta.inputs],
            output=[_config_tensor(model_config_pb2.ModelOutput, t) for t in meta.outputs],
            parameters={
                k: model_config_pb2.ModelParameter(string_value=v) for k, v in parameters.items()
            },
        )
        return service_pb2.ModelConfigResponse(config=config)

    @rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        plane = self.plane
        runtime = plane.model(request.model_name, request.model_version or None)
        check_tensor_count(len(request.outputs), "outputs")
        max_rows = plane.settings.max_images_per_request
        light = _typed_values(request) * 4 <= plane.settings.inline_decode_bytes
        inputs = await plane.work.run_here_if_light(light, _input_tensors, request, max_rows)
        if any("classification" in o.parameters for o in request.outputs):
            raise InvalidInput("the classification extension is not supported; ask for tensors")
        requested = [RequestedOutput(o.name, binary=True) for o in request.outputs]
        answer = await plane.infer(runtime, InferRequest(request.id, inputs, requested))
        response = service_pb2.ModelInferResponse(
            model_name=answer.model_name, model_version=answer.model_version, id=request.id
        )
        for output_name, array in answer.outputs.items():
            response.outputs.add(
                name=output_name, datatype=DATATYPE_NAMES[array.dtype], shape=list(array.shape)
            )
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return response

    # -- the model repository extension: the data plane's, under the admin rules (admin.py) ---

    def _require_admin(self, context: Any, method: str) -> None:
        settings = self.plane.settings
        metadata = [(m.key, m.value) for m in context.invocation_metadata() or ()]
        who = caller(peer_host(context.peer()), metadata, settings.trusted_proxies)
        authorization = next((v for k, v in metadata if k == "authorization"), "")
        token = authorization if isinstance(authorization, str) else ""
        check_admin(settings, who, token, f"gRPC {method}")

    @rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "RepositoryIndex")
        rows = self.plane.repository_index(request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**vars(row)) for row in rows]
        )

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "RepositoryModelLoad")
        await self.plane.load_model(request.model_name, request.parameters.keys())
        return service_pb2.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "RepositoryModelUnload")
        await self.plane.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def _input_tensors(request: Any, max_rows: int) -> list[InputTensor]:
    """The request's inputs: all in ``raw_input_contents`` (tritonclient's way) or all typed."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input"
        )
    if not request.inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    check_tensor_count(len(request.inputs), "inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        values: list[Any] | None = None
        if not raw:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if field is None:
                raise UnprocessableInput(
                    f"input {tensor.name!r}: {tensor.datatype} data must come in raw_input_contents"
                )
            values = list(getattr(tensor.contents, field))
        tensors.append(
            tensor_from_parts(
                tensor.name,
                tensor.datatype,
                list(tensor.shape),
                raw[i] if raw else None,
                values,
                max_rows,
            )
        )
    return tensors


def _typed_values(request: Any) -> int:
    """How many values the request's inputs carry as typed ``contents`` (Python numbers to make,
    unlike ``raw_input_contents``, which numpy reads in place)."""
    count = 0
    for tensor in request.inputs[:MAX_TENSORS]:
        field = CONTENTS_FIELDS.get(tensor.datatype)
        count += len(getattr(tensor.contents, field)) if field else 0
    return count


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc-core's bounds on connections and streams, from ``settings`` (an age or idle time of 0
    leaves grpc's default: none)."""
    options = [
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        # A connection that has not finished its HTTP/2 handshake (grpc's default: 120 s).
        ("grpc.server_handshake_timeout_ms", round(settings.header_timeout_s * 1000)),
    ]
    if settings.grpc_max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", settings.grpc_max_connection_age_ms))
        grace = settings.grpc_max_connection_age_grace_ms
        options.append(("grpc.max_connection_age_grace_ms", grace))
    if settings.grpc_max_connection_idle_ms:
        options.append(("grpc.max_connection_idle_ms", settings.grpc_max_connection_idle_ms))
    return options


async def start_grpc_server(plane: DataPlane) -> tuple[Any, int]:
    """A started ``grpc.aio`` server on ``HOST:GRPC_PORT`` and the port it bound."""
    settings = plane.settings
    limit = (
        settings.max_request_bytes
    )  # the REST body limit; over it gRPC answers RESOURCE_EXHAUSTED
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            *connection_options(settings),
        ],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs or None,
    )
    server.add_generic_rpc_handlers((method_handlers(InferenceServicer(plane)),))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port: int = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot bind {host}:{settings.grpc_port} ({exc})") from None
    await server.start()
    return server, port


def serve_grpc(app: FastAPI) -> FastAPI:
    """Run the gRPC service inside ``app``'s lifespan, on the same event loop and ``ServiceState``:
    it opens once the models are loaded and closes before they are (calls in flight get
    ``SHUTDOWN_TIMEOUT_S``). The bound port is ``app.state.grpc_port``."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        async with inner(scope_app) as value:
            plane: DataPlane = app.state.dataplane
            server, port = await start_grpc_server(plane)
            app.state.grpc_port = port
            log.info("gRPC serving on %s:%d", plane.settings.host, port)
            try:
                yield value
            finally:
                await server.stop(plane.settings.shutdown_timeout_s)

    app.router.lifespan_context = lifespan
    return app
