"""What the compose files say, read as files: the container suite (``make image-check``) runs
them for real (lb before api, ``--scale api=2``, recreated replicas, the trainer profile)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support.servers import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GPU: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
API, TRAINER = COMPOSE["services"]["api"], COMPOSE["services"]["trainer"]
LB = COMPOSE["services"]["lb"]


def shell_healthcheck(test: list[str]) -> str:
    """The command of a CMD-SHELL healthcheck."""
    kind, command = test
    assert kind == "CMD-SHELL", "podman's Docker API splits exec-form arguments on spaces"
    return command


def test_python_base_image_is_a_setting() -> None:
    """(lb's NGINX_IMAGE and the ports published on lb only: tests/deploy/test_nginx.py.)"""
    for service in (API, TRAINER):
        assert service["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"


def test_api_keeps_the_image_command_restarts_and_checks_readiness_in_shell_form() -> None:
    """The image's CMD reads HOST/PORT from its environment, so compose gives no command."""
    assert "command" not in API, "compose keeps the image's CMD"
    assert API["restart"] in ("always", "unless-stopped")
    assert "/v2/health/ready" in shell_healthcheck(API["healthcheck"]["test"])
    assert "wget" in shell_healthcheck(LB["healthcheck"]["test"])


def test_api_runs_one_worker_per_container() -> None:
    """WORKERS=auto counts the host's cores, not a container's CPU quota: replicas scale."""
    assert API["environment"]["WORKERS"] == "1"


def test_trainer_runs_as_the_caller_not_a_fixed_uid() -> None:
    """bash exports no UID and has no GID, so ``${UID:-1000}`` was always 1000: the ids come
    from .env (make compose-env) or the command line, and an unset id fails the run loudly."""
    user = TRAINER["user"]
    assert "UID:-1000" not in user and "${UID" not in user
    assert re.fullmatch(r"\$\{CIFAR_UID:-[a-z-]+\}:\$\{CIFAR_GID:-[a-z-]+\}", user), user
    makefile = (ROOT / "Makefile").read_text()
    assert "compose-env:" in makefile and "CIFAR_UID=%s" in makefile and "id -u" in makefile


def test_gpu_override_builds_api_gpu_reserves_an_nvidia_device_and_requires_cuda() -> None:
    gpu_api = GPU["services"]["api"]
    assert gpu_api["build"]["target"] == "api-gpu"
    (device,) = gpu_api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu_api["environment"]["PROVIDERS"].startswith("CUDAExecutionProvider")
    assert gpu_api["environment"]["REQUIRE_PROVIDERS"] == "true"


def test_stop_grace_outlasts_the_drain() -> None:
    drain = float(API["environment"]["SHUTDOWN_TIMEOUT_S"])
    grace = float(str(API["stop_grace_period"]).rstrip("s"))
    assert grace > drain, "the engine's SIGKILL must not cut the drain short"
    assert float(str(LB["stop_grace_period"]).rstrip("s")) >= drain


def test_compose_serves_models_and_trains_into_the_same_folder() -> None:
    assert API["build"]["target"] == "api" and TRAINER["build"]["target"] == "trainer"
    assert TRAINER["profiles"] == ["train"]
    assert TRAINER["command"][:4] == ["python", "-m", "training", "retrain"]
    api_models = [v for v in API["volumes"] if v.split(":")[1] == "/models"]
    trainer_models = [v for v in TRAINER["volumes"] if v.split(":")[1] == "/models"]
    assert api_models and trainer_models
    assert api_models[0].split(":")[0] == trainer_models[0].split(":")[0] == "./models"


def test_the_trainer_reads_the_apis_prediction_log_read_only() -> None:
    """The retrain job's --feedback path lies on the volume the api writes its log to."""
    api_log = [v for v in API["volumes"] if v.split(":")[1] == "/var/lib/cifar-serve"]
    trainer_log = [v for v in TRAINER["volumes"] if v.split(":")[1] == "/var/lib/cifar-serve"]
    assert api_log and trainer_log
    assert api_log[0].split(":")[0] == trainer_log[0].split(":")[0] == "prediction-log"
    assert trainer_log[0].endswith(":ro")
    command = TRAINER["command"]
    feedback = command[command.index("--feedback") + 1]
    assert feedback == "/var/lib/cifar-serve/predictions.sqlite3"
    assert "--feedback-optional" in command
