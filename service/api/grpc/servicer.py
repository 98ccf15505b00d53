"""The servicer of ``inference.GRPCInferenceService``: each call asks the data plane and hands
the answer to ``codec``; ``rpc`` holds the call's leases, counts it, and turns the error tree into
gRPC status codes (``GRPC_CODES``, the one mapping)."""

from __future__ import annotations

import functools
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any, NoReturn

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.admin import check_admin
from service.api.client_address import caller
from service.api.config_override import read_config_override
from service.api.grpc import codec, extension_codec, settings_codec
from service.api.grpc.admission import Admission, Refuse
from service.api.grpc.handlers import Oversized, Undecodable
from service.api.grpc.shared_memory import status_response
from service.api.grpc.stream import infer_message, serve_stream
from service.core.errors import InvalidInput, ModelNotFound, ModelNotReady, ServingError
from service.core.throttled_log import ThrottledLog
from service.dataplane.dataplane import DataPlane, request_scope

log = logging.getLogger(__name__)
# A failure a client can cause at will (UNAVAILABLE of a full queue, a model not ready): one line
# per error class per interval, with the count of the rest, as REST's (http_io).
_serving_error_log = ThrottledLog(log)

INTERNAL_MESSAGE = "internal server error"
MAX_STATUS_BYTES = 2000  # of a status message, percent-encoded (grpc-core's limit: 2,048)
CUT = "... (cut)"
EXTENSIONS = [
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "logging",
    "trace",
]

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
    HTTPStatus.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    code: grpc.StatusCode = GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
    return code


def status_message(message: str) -> str:
    """``message`` cut to fit the ``grpc-message`` trailer: grpc-core percent-encodes it (3
    bytes for each byte outside printable ASCII, and ``%``) and drops one over 2,048 bytes,
    leaving the client no reason and writing a line to stderr every call."""
    # grpc encodes it as strict UTF-8: a lone surrogate failed the call (the client's deadline)
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message.encode()) * 3 <= MAX_STATUS_BYTES:
        return message
    size = 0
    for end, char in enumerate(message):
        size += sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in char.encode())
        if size > MAX_STATUS_BYTES - len(CUT):
            return message[:end] + CUT
    return message


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
            if isinstance(request, Oversized):
                raise request.refusal()
            with request_scope():
                return await method(self, request, context)
        except ServingError as exc:
            code = grpc_code(exc.status)
            message = exc.message
            if code is grpc.StatusCode.INTERNAL:
                log.error("gRPC %s failed", name, exc_info=exc)
                message = INTERNAL_MESSAGE
            elif exc.status >= 500 and not isinstance(exc.__cause__, ServingError):
                kind = f"{exc.status} {type(exc).__name__}"
                _serving_error_log.warning("gRPC %s: %s", name, exc.message, key=kind)
        except Exception as exc:
            log.error("gRPC %s failed", name, exc_info=exc)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        finally:
            self.plane.metrics.observe_grpc_call(name, code.name, time.perf_counter() - start)
        await context.abort(code, status_message(message))

    return call


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's calls on the shared ``DataPlane``; the others answer UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        settings = plane.settings
        self.admission = Admission(
            settings.grpc_max_concurrent_rpcs,
            settings.grpc_max_waiting_calls,
            settings.body_timeout_s,
        )

    def refuse(self, name: str) -> Refuse:
        """How a call of method ``name`` that is not admitted ends: counted, with its code."""

        async def refused(why: ServingError, context: Any) -> NoReturn:
            self.plane.metrics.observe_grpc_call(name, grpc_code(why.status).name, 0.0)
            await context.abort(grpc_code(why.status), status_message(why.message))
            raise AssertionError("abort returned")  # grpc's abort raises

        return refused

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
        return codec.server_metadata_response(DataPlane.server_metadata(EXTENSIONS))

    @rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.model_metadata(request.name, request.version or None)
        return codec.model_metadata_response(meta)

    @rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        config = self.plane.model_config(request.name, request.version or None)
        return extension_codec.model_config_response(config)

    @rpc
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = await self.plane.statistics(request.name or None, request.version or None)
        return extension_codec.statistics_response(stats)

    @rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        answer, held = await infer_message(self.plane, request, context.invocation_metadata())
        if held:  # the answer's bytes, counted until the call is done (sent, or not)
            budget = self.plane.body_budget
            context.add_done_callback(lambda _: budget.give(held))
        return answer

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        metadata, admission = context.invocation_metadata(), self.admission
        stream = serve_stream(self.plane, requests, grpc_code, metadata, admission=admission)
        try:
            async for response in stream:
                yield response
        except ServingError as why:  # its place was needed while it sent nothing
            await context.abort(grpc_code(why.status), status_message(why.message))

    # -- the logging and trace extensions: read by anyone, changed under the admin rules ------

    @rpc
    async def LogSettings(self, request: Any, context: Any) -> Any:
        changes = settings_codec.log_changes(request)
        if changes:
            self._require_admin(context, "LogSettings")
        log_settings = self.plane.log_settings
        return settings_codec.log_response(
            log_settings.update(changes) if changes else log_settings.get()
        )

    @rpc
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        changes, model = settings_codec.trace_changes(request), request.model_name or None
        if model:
            self.plane.version_status(model)  # NOT_FOUND for a model the repository lacks
        if changes:
            self._require_admin(context, "TraceSetting")
        traces = self.plane.trace_settings
        values = traces.update(changes, model) if changes else traces.get(model)
        return settings_codec.trace_response(values)

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
        return codec.repository_index_response(self.plane.repository_index(request.ready))

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "RepositoryModelLoad")
        name, parameters = request.model_name, request.parameters
        override = None
        if "config" in parameters:
            config = parameters["config"]
            kind = config.WhichOneof("parameter_choice")
            text = config.string_param if kind == "string_param" else None
            plane = self.plane
            override = await read_config_override(
                plane.work, name, text, lambda: plane.model_config(name)
            )
        await self.plane.load_model(name, parameters.keys(), override)
        return service_pb2.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "RepositoryModelUnload")
        await self.plane.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- system shared memory: the data plane's registry, under the same admin rules ----------

    @rpc
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "SystemSharedMemoryStatus")
        return status_response(self.plane.shared_memory.status(request.name))

    @rpc
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "SystemSharedMemoryRegister")
        r = request
        await self.plane.register_region(r.name, r.key, r.offset, r.byte_size)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @rpc
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        self._require_admin(context, "SystemSharedMemoryUnregister")
        await self.plane.unregister_region(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()
