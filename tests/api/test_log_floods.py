"""Log lines any client can cause at will, refused repository calls and 5xx answers (REST and
gRPC), are written once an interval per kind, the next line saying how many came meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc
from pydantic import SecretStr
from tritonclient.utils import InferenceServerException

from service.api import admin
from service.api.client_address import Caller
from service.api.rest import http_io
from service.core.errors import Forbidden, ModelNotReady, Overloaded, Unauthorized
from service.core.throttled_log import INTERVAL_S, ThrottledLog
from service.settings import Settings
from tests.support.apps import make_settings
from tests.support.models import make_model_repo
from tests.support.servers import running_server


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refused_repository_calls_write_a_line_an_interval_with_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(admin, "_refusal_log", ThrottledLog(admin.log, clock=clock))
    settings = make_settings(Path("models"), admin_token=SecretStr("s3cret-token"))
    flooder = Caller(peer="198.51.100.7", forwarded=False, client="198.51.100.7")
    caplog.set_level(logging.INFO, logger="service.api.admin")
    for _ in range(1000):
        with pytest.raises(Forbidden):
            admin.check_admin(settings, flooder, "Bearer wrong", "POST /v2/repository/index")
    with pytest.raises(Unauthorized):  # another reason is another kind
        admin.check_admin(settings, flooder, "", "POST /v2/repository/index")
    clock.now += INTERVAL_S
    with pytest.raises(Forbidden):
        admin.check_admin(settings, flooder, "Bearer wrong", "POST /v2/repository/index")
    admin.check_admin(settings, flooder, "Bearer s3cret-token", "POST /v2/repository/index")
    lines = [r.getMessage() for r in caplog.records]
    refused = "POST /v2/repository/index refused for client '198.51.100.7'"
    assert lines == [
        f"{refused}: wrong bearer token for the repository API",
        f"{refused}: the repository API needs 'Authorization: Bearer <ADMIN_TOKEN>'",
        f"{refused}: wrong bearer token for the repository API (999 more since the last such line)",
        "POST /v2/repository/index for client '198.51.100.7' (token)",  # admitted: every one
    ]


def test_5xx_answers_write_a_warning_an_interval_per_error_class_with_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(http_io, "_serving_error_log", ThrottledLog(http_io.log, clock=clock))
    caplog.set_level(logging.WARNING, logger="service.api.rest.http_io")
    for n in range(500):
        response = http_io.serving_error_response(Overloaded(f"queue full ({n})"), "POST", "/x")
        assert response.status_code == 503
    http_io.serving_error_response(ModelNotReady("m is loading"), "POST", "/y")
    clock.now += INTERVAL_S
    http_io.serving_error_response(Overloaded("queue full (last)"), "POST", "/x")
    assert [r.getMessage() for r in caplog.records] == [
        "POST /x: queue full (0)",
        "POST /y: m is loading",
        "POST /x: queue full (last) (499 more since the last such line)",
    ]


def test_grpc_unavailable_answers_write_a_warning_an_interval_not_one_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version REQUIRE_PROVIDERS keeps from serving answers UNAVAILABLE (a 503) to every
    call: 50 calls write one warning (the next, 10 s on, would count the other 49)."""
    settings = Settings(
        model_repository=make_model_repo(tmp_path, lecture=False),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        require_providers=True,
    )
    caplog.set_level(logging.WARNING, logger="service.api.grpc.servicer")
    with running_server(settings) as server:
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        try:
            for _ in range(50):
                with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
                    client.get_model_metadata("tiny")
        finally:
            client.close()
    warnings = [r for r in caplog.records if r.name == "service.api.grpc.servicer"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
