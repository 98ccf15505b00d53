"""The logging extension changes what the running service writes: ``log_info`` off silences the
INFO lines (the repository API's audit lines), ``log_verbose_level`` 1 adds DEBUG ones (a
version closing on unload); read from the real process's stderr."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.support.interop import MODEL, VERSION, lecture_repository
from tests.support.servers import server_process, service_command, wait_until

TOKEN = "log-level-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
INDEX_LINE = "POST /v2/repository/index for client"
CLOSED_LINE = f"{MODEL} v{VERSION} closed"  # the served (newest) version


def test_log_settings_change_what_the_service_logs(tmp_path: Path) -> None:
    repo = lecture_repository(tmp_path)
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "PROVIDERS": "CPUExecutionProvider",
           "ADMIN_TOKEN": TOKEN, "PYTHONPATH": os.getcwd()}  # fmt: skip
    with server_process(service_command(), env=env) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers=ADMIN) as http:

            def index_lines() -> int:
                return server.log.count(INDEX_LINE)

            assert http.post("/v2/repository/index").status_code == 200
            wait_until(lambda: index_lines() == 1, 10, "the INFO audit line")
            off = http.post("/v2/logging", json={"log_info": False})
            assert off.json()["log_info"] is False
            assert http.post("/v2/repository/index").status_code == 200
            assert http.post("/v2/logging", json={"log_info": True}).status_code == 200
            assert http.post("/v2/repository/index").status_code == 200
            wait_until(lambda: index_lines() == 2, 10, "the INFO line back")
            assert CLOSED_LINE not in server.log  # nothing has closed yet
            assert http.post("/v2/logging", json={"log_verbose_level": 1}).status_code == 200
            assert http.post(f"/v2/repository/models/{MODEL}/unload").status_code == 200
            wait_until(lambda: CLOSED_LINE in server.log, 10, "the DEBUG line")
    assert server.log.count(INDEX_LINE) == 2  # the one sent while log_info was off is missing
