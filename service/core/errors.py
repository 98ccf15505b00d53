"""One exception tree for the whole project; each error carries the HTTP status it maps to.

The API turns any ``ServingError`` into ``{"error": message}`` with ``status`` in one handler;
training raises the same classes and the CLI prints the message.
"""

from __future__ import annotations

from http import HTTPStatus

MAX_SHOWN_CHARS = 64  # of a client's string quoted in an error message
# of a whole message: a longer one is cut (a gRPC client drops a status message over 16 KiB,
# and a message echoing a 30 MB tensor name held the loop 0.6 s and grpc-core 33 MB a call)
MAX_MESSAGE_CHARS = 4096


def shown(text: str) -> str:
    """``text`` quoted for an error message, cut past ``MAX_SHOWN_CHARS``: a name a client sends
    over gRPC may be 60 MB, and its ``repr`` alone took 140 ms of the event loop."""
    if len(text) <= MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:MAX_SHOWN_CHARS]!r}... ({len(text)} characters)"


def file_problem(exc: Exception) -> str:
    """Why a file could not be read, without its path (clients see these reasons, and an OS
    error's text names the file's full path on the server)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


class ServingError(Exception):
    """Base of every expected error; ``status`` is what a client sees."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... (cut from {len(message)} characters)"
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is well-formed but its content is not acceptable."""

    status = HTTPStatus.BAD_REQUEST


class InvalidLayerSpec(ServingError):
    """A layer stack whose arithmetic does not work out (names the layer and the formula)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ModelNotFound(ServingError):
    status = HTTPStatus.NOT_FOUND


class RegionNotFound(ServingError):
    """A shared memory region that is not registered (its status asked by name)."""

    status = HTTPStatus.NOT_FOUND


class ModelNotReady(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class ProviderUnavailable(ServingError):
    """A requested execution provider that did not load while REQUIRE_PROVIDERS is set."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class Overloaded(ServingError):
    """The batch queue is full; the client should retry later."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class BodyBudgetFull(Overloaded):
    """The process holds its most bytes of request bodies (``MAX_BODY_BYTES_IN_FLIGHT``): the rest
    of this body is not read, and the connection closes."""


class TooManyCalls(ServingError):
    """A gRPC call past ``GRPC_MAX_CONCURRENT_RPCS`` calls at work (RESOURCE_EXHAUSTED, as
    grpc's own limit answers)."""

    status = HTTPStatus.TOO_MANY_REQUESTS


class TimeoutExpired(ServingError):
    """A request still queued when its ``timeout`` parameter (or ``REQUEST_TIMEOUT_US``) ran out:
    answered without running, as Triton's UNAVAILABLE "Request timeout expired"."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class Forbidden(ServingError):
    status = HTTPStatus.FORBIDDEN


class InvalidCard(ServingError):
    """A model card that is missing, malformed or disagrees with its graph."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class DataError(ServingError):
    """Training data that is missing, corrupt or inconsistent (the message names the file)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ExportError(ServingError):
    """An export that failed its checks (the parity gate); nothing is published."""


class PublishError(ServingError):
    """Publishing a model version into the repository failed; nothing partial is left."""


class PayloadTooLarge(InvalidInput):
    """A request body or image count over the configured limits."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class RequestTimeout(InvalidInput):
    """A client that did not send its request body within ``BODY_TIMEOUT_S``."""

    status = HTTPStatus.REQUEST_TIMEOUT


class HostNotAllowed(InvalidInput):
    """A Host header that ``ALLOWED_HOSTS`` does not name (a DNS-rebinding page, for one)."""


class UnsupportedMediaType(InvalidInput):
    """A request body in a content type the endpoint does not read."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class UnprocessableInput(InvalidInput):
    """Well-formed input that does not fit the model: shape, datatype, data length, bad image."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class InvalidConfig(ServingError):
    """A version policy (setting or a model's ``config.json``) or a ``config.pbtxt`` that cannot
    be read or asks for what this service does not honour."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class Unauthorized(ServingError):
    """A repository request without the bearer token that ``ADMIN_TOKEN`` asks for."""

    status = HTTPStatus.UNAUTHORIZED


class ModelLoadFailed(ServingError):
    """A load request after which no version of the model is ready (the reasons are listed)."""

    status = HTTPStatus.BAD_REQUEST


class RecordNotFound(ServingError):
    """Feedback for a request id the prediction log has no record of."""

    status = HTTPStatus.NOT_FOUND


class LabelConflict(ServingError):
    """An open label (``FEEDBACK_OPEN``) for a record an admin labelled otherwise: the admin's
    label stands, and nothing of the request is written (the same label is no conflict)."""

    status = HTTPStatus.CONFLICT


class PredictionLogOff(ServingError):
    """Feedback while ``PREDICTION_LOG`` is off: there is nothing to label."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class WorkersPending(ServingError):
    """A repository call made in the worker that took it, not yet in every other worker."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
