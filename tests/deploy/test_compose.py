"""docker compose without a Docker engine: read the compose file and the Dockerfile, then run the
exact commands, environment and paths they give as subprocesses (mount points mapped to folders
here, the published port to a free one), and hit the healthcheck.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import answers_200, server_process, wait_until
from tests.training.conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GPU: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
API, TRAINER = COMPOSE["services"]["api"], COMPOSE["services"]["trainer"]


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each named stage, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        else:
            current.append(line)
    return stages


STAGES = dockerfile_stages()


def _instructions(stage: str, keyword: str) -> list[str]:
    return [line for line in STAGES[stage] if line.upper().startswith(keyword + " ")]


def _mounts(service: dict[str, Any], here: dict[str, Path]) -> dict[str, Path]:
    """Container path -> folder here, for each bind mount ``./host:/container[:ro]``."""
    mounts = {}
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        mounts[container] = here[host]
    return mounts


def _localise(value: str, mounts: dict[str, Path]) -> str:
    for container, path in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if value == container or value.startswith(container + "/"):
            return str(path) + value[len(container) :]
    return value


def _command(service: dict[str, Any], mounts: dict[str, Path]) -> list[str]:
    argv = [_localise(arg, mounts) for arg in service["command"]]
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _environment(service: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
    env = {k: _localise(str(v), mounts) for k, v in service.get("environment", {}).items()}
    return {**os.environ, **env}


# --- the files themselves -------------------------------------------------------------------


def test_api_image_is_slim_non_root_and_checks_readiness() -> None:
    api = " ".join(STAGES["api"])
    assert "torch" not in api and "[train]" not in api
    assert _instructions("api", "USER") == ["USER app"]
    assert "useradd" in " ".join(STAGES["base"]) and "--uid 10001" in " ".join(STAGES["base"])
    (healthcheck,) = _instructions("api", "HEALTHCHECK")
    assert "/v2/health/ready" in healthcheck
    (cmd,) = _instructions("api", "CMD")
    assert cmd.split(None, 1)[1].replace(" ", "") == str(API["command"]).replace("'", '"').replace(
        " ", ""
    )


def test_trainer_image_has_cpu_torch_and_runs_the_retrain_job() -> None:
    trainer = " ".join(STAGES["trainer"])
    assert ".[train]" in trainer and "download.pytorch.org/whl/cpu" in trainer
    assert "retrain" in " ".join(_instructions("trainer", "CMD"))
    assert TRAINER["command"][:4] == ["python", "-m", "training", "retrain"]


def test_gpu_variant_uses_onnxruntime_gpu_and_reserves_an_nvidia_device() -> None:
    assert "onnxruntime-gpu" in " ".join(STAGES["api-gpu"])
    gpu_api = GPU["services"]["api"]
    assert gpu_api["build"]["target"] == "api-gpu"
    (device,) = gpu_api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu_api["environment"]["PROVIDERS"].startswith("CUDAExecutionProvider")


def test_compose_serves_models_and_trains_into_the_same_folder() -> None:
    assert API["build"]["target"] == "api" and TRAINER["build"]["target"] == "trainer"
    # The host ports are published by the load balancer in front of api (tests/deploy/test_nginx.py)
    lb = COMPOSE["services"]["lb"]
    assert "8000:8000" in lb["ports"] and "8001:8001" in lb["ports"]
    assert "ports" not in API and set(API["expose"]) == {"8000", "8001"}
    assert API["restart"] in ("always", "unless-stopped")
    assert "/v2/health/ready" in " ".join(API["healthcheck"]["test"])
    assert TRAINER["profiles"] == ["train"]
    api_models = [v for v in API["volumes"] if v.split(":")[1] == "/models"]
    trainer_models = [v for v in TRAINER["volumes"] if v.split(":")[1] == "/models"]
    assert api_models and trainer_models
    assert api_models[0].split(":")[0] == trainer_models[0].split(":")[0] == "./models"


# --- running what they say ------------------------------------------------------------------


@pytest.fixture
def compose_dirs(tmp_path: Path) -> dict[str, Path]:
    """Folders standing in for ./models (a copy of the shipped one) and ./data (a tiny subset)."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns(".*"))
    data = tmp_path / "data"
    write_image_folder(data / "cifar10-jpeg")
    return {"./models": models, "./data": data, "scratch": tmp_path / "scratch"}


@pytest.fixture
def api_server(compose_dirs: dict[str, Path]) -> Iterator[str]:
    """The api service's command and environment, on a free loopback port."""
    mounts = _mounts(API, compose_dirs)
    argv = _command(API, mounts)
    argv[argv.index("--host") + 1] = "127.0.0.1"  # the container's 0.0.0.0, kept on loopback here
    argv[argv.index("--port") + 1] = "0"  # the published 8000, any free port here
    argv[argv.index("--grpc-port") + 1] = "0"  # and the published gRPC 8001
    with server_process(argv, env=_environment(API, mounts)) as server:
        yield server.address


def _healthcheck(address: str) -> int:
    """The compose healthcheck's own command, pointed at this server's port."""
    kind, *argv = API["healthcheck"]["test"]
    assert kind == "CMD" and argv[0] == "python"
    argv = [sys.executable, *(a.replace("127.0.0.1:8000", address) for a in argv[1:])]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_api_command_passes_its_healthcheck(api_server: str) -> None:
    wait_until(lambda: _healthcheck(api_server) == 0, 30, "healthcheck never passed", 0.2)
    models = httpx.get(f"http://{api_server}/v2/models/cifar10_cnn").json()
    assert models["name"] == "cifar10_cnn" and "1" in models["versions"]


@pytest.mark.slow
def test_trainer_command_publishes_a_version_the_running_api_picks_up(
    api_server: str, compose_dirs: dict[str, Path]
) -> None:
    mounts = {**_mounts(TRAINER, compose_dirs), "/tmp": compose_dirs["scratch"]}
    argv = _command(TRAINER, mounts)
    # The same job on the tiny subset: one short epoch and a gate that lets it through.
    argv += ["--epochs", "1", "--val-size", "10", "--threads", "1"]
    argv += ["--min-accuracy", "0", "--max-regression", "1"]
    env = _environment(TRAINER, mounts)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (compose_dirs["./models"] / "cifar10_cnn" / "2" / "card.json").exists()
    version_2 = f"http://{api_server}/v2/models/cifar10_cnn/versions/2/ready"
    wait_until(lambda: answers_200(version_2), 30, "version 2 never served", 0.2)
