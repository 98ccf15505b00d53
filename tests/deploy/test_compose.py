"""docker compose without a Docker engine: read the compose file and the Dockerfile, then run the
exact commands, environment and paths they give as subprocesses (mount points mapped to folders
here, the published port to a free one), and hit the healthcheck.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.servers import answers_200, server_process, wait_until
from tests.support.training_inputs import write_image_folder

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


def _image_env(stage: str) -> dict[str, str]:
    """ENV settings of a stage (``ENV A=1 B=2``)."""
    pairs = " ".join(line.split(None, 1)[1] for line in _instructions(stage, "ENV"))
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


def _shell_healthcheck(test: list[str] | str) -> str:
    """The command of a CMD-SHELL healthcheck (compose list form or Dockerfile shell form)."""
    if isinstance(test, list):
        kind, command = test
        assert kind == "CMD-SHELL", "podman's Docker API splits exec-form arguments on spaces"
        return command
    assert not test.lstrip().startswith("["), "shell form, not exec form"
    return test


def test_api_image_is_slim_non_root_and_checks_readiness() -> None:
    api = " ".join(STAGES["api"])
    assert "torch" not in api and "[train]" not in api
    assert _instructions("api", "USER") == ["USER app"]
    assert "useradd" in " ".join(STAGES["base"]) and "--uid 10001" in " ".join(STAGES["base"])
    (healthcheck,) = _instructions("api", "HEALTHCHECK")
    assert "/v2/health/ready" in _shell_healthcheck(healthcheck.split(" CMD ", 1)[1])


def test_api_command_takes_host_and_ports_from_the_environment() -> None:
    """CMD has no flags (flags would override HOST/PORT); the image sets them as settings."""
    (cmd,) = _instructions("api", "CMD")
    assert json.loads(cmd.split(None, 1)[1]) == ["python", "-m", "service"]
    env = _image_env("api")
    assert (env["HOST"], env["PORT"], env["GRPC_PORT"]) == ("0.0.0.0", "8000", "8001")
    assert "command" not in API, "compose keeps the image's CMD"
    assert set(API["expose"]) == {env["PORT"], env["GRPC_PORT"]}


def test_base_images_are_build_arguments_and_no_frontend_image_is_fetched() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE), "a frontend image needs Docker Hub"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert STAGES["base"][0] == "FROM ${PYTHON_IMAGE}"
    for service in (API, TRAINER):
        assert service["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"
    assert COMPOSE["services"]["lb"]["image"].startswith("${NGINX_IMAGE:-nginx:")


def test_dependencies_are_installed_from_the_lock_before_sources_are_copied() -> None:
    """A source or README edit must not reinstall the dependencies: in every stage the locked
    install comes before any COPY of the project."""
    for stage, lock in (("api", "api.txt"), ("api-gpu", "api-gpu.txt"), ("trainer", "trainer.txt")):
        lines = STAGES[stage]
        install = next(i for i, line in enumerate(lines) if f"requirements/{lock}" in line)
        assert "--requirement" in lines[install]
        copies = [i for i, line in enumerate(lines) if line.upper().startswith("COPY ")]
        assert all(i > install for i in copies), f"{stage}: COPY before the dependency layer"
        # The project itself goes in last, without touching the locked set.
        installs = [line for line in lines if "pip install" in line and " ." in line]
        assert all("--no-deps" in line for line in installs), installs


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)
    }


def _project_requirements(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=!~ ;]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_locks_pin_every_dependency_of_pyproject() -> None:
    """requirements/*.txt come from pyproject.toml (make lock); stale locks miss a package."""
    for lock, extras in (
        ("api.txt", ("cpu",)),
        ("api-gpu.txt", ("gpu",)),
        ("trainer.txt", ("cpu", "train")),
    ):
        pins = _pins(lock)
        missing = _project_requirements(*extras) - set(pins)
        assert not missing, f"{lock} lacks {missing}: run make lock"
        assert "make lock" in (ROOT / "requirements" / lock).read_text()
    api, gpu, trainer = _pins("api.txt"), _pins("api-gpu.txt"), _pins("trainer.txt")
    assert "torch" not in api and "onnxruntime-gpu" not in api
    assert "onnxruntime" not in gpu, "onnxruntime-gpu replaces onnxruntime (pip check)"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu_spec,) = extras["optional-dependencies"]["gpu"]
    assert gpu_spec.endswith(f"=={gpu['onnxruntime-gpu']}"), "the lock pins what pyproject pins"
    assert any(name.endswith("-cu12") for name in gpu), "the CUDA 12 wheels the README names"
    assert trainer["torch"].endswith("+cpu"), "only the CPU index has the +cpu build"
    assert not [name for name in trainer if name.startswith("nvidia")]
    shared = set(api) & set(trainer)
    assert {n: api[n] for n in shared} == {n: trainer[n] for n in shared}


def test_trainer_image_has_cpu_torch_from_the_cpu_index_only() -> None:
    trainer = " ".join(STAGES["trainer"])
    assert "--extra-index-url" not in trainer, "a fallback index can hand out CUDA torch"
    assert '--index-url "$TORCH_INDEX_URL"' in trainer and "--no-deps" in trainer
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in STAGES["trainer"]
    assert "torch.version.cuda is not None" in trainer  # the build fails on a CUDA torch
    assert "retrain" in " ".join(_instructions("trainer", "CMD"))
    assert TRAINER["command"][:4] == ["python", "-m", "training", "retrain"]


def test_trainer_runs_as_the_caller_not_a_fixed_uid() -> None:
    """bash exports no UID and has no GID, so ``${UID:-1000}`` was always 1000: the ids come
    from .env (make compose-env) or the command line, and an unset id fails the run loudly."""
    user = TRAINER["user"]
    assert "UID:-1000" not in user and "${UID" not in user
    assert re.fullmatch(r"\$\{CIFAR_UID:-[a-z-]+\}:\$\{CIFAR_GID:-[a-z-]+\}", user), user
    makefile = (ROOT / "Makefile").read_text()
    assert "compose-env:" in makefile and "CIFAR_UID=%s" in makefile and "id -u" in makefile


def test_gpu_variant_uses_pinned_onnxruntime_gpu_and_reserves_an_nvidia_device() -> None:
    gpu_stage = " ".join(STAGES["api-gpu"])
    assert "requirements/api-gpu.txt" in gpu_stage and "pip check" in gpu_stage
    assert "pip uninstall --yes onnxruntime" in gpu_stage
    gpu_api = GPU["services"]["api"]
    assert gpu_api["build"]["target"] == "api-gpu"
    (device,) = gpu_api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu_api["environment"]["PROVIDERS"].startswith("CUDAExecutionProvider")
    assert gpu_api["environment"]["REQUIRE_PROVIDERS"] == "true"


def test_build_secrets_and_local_files_stay_out_of_images() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "build", ".hypothesis", ".git", ".venv", "data"} <= ignored
    text = (ROOT / "Dockerfile").read_text()
    # pip's CA and index settings reach a build as secrets only, never as ARG or ENV.
    assert not re.search(r"^(ARG|ENV)\b.*(PIP_CERT|PIP_INDEX|PIP_EXTRA|CERT)", text, re.M)
    for stage in ("api", "api-gpu", "trainer"):
        for line in STAGES[stage]:
            if "pip-install.sh" in line and line.startswith("RUN"):
                assert "type=secret,id=pip_ca" in line and "type=secret,id=pip_conf" in line


def test_stop_grace_outlasts_the_drain() -> None:
    drain = float(API["environment"]["SHUTDOWN_TIMEOUT_S"])
    grace = float(str(API["stop_grace_period"]).rstrip("s"))
    assert grace > drain, "the engine's SIGKILL must not cut the drain short"
    assert float(str(COMPOSE["services"]["lb"]["stop_grace_period"]).rstrip("s")) >= drain


def test_compose_serves_models_and_trains_into_the_same_folder() -> None:
    assert API["build"]["target"] == "api" and TRAINER["build"]["target"] == "trainer"
    # The host ports are published by the load balancer in front of api (tests/deploy/test_nginx.py)
    lb = COMPOSE["services"]["lb"]
    assert "8000:8000" in lb["ports"] and "8001:8001" in lb["ports"]
    assert "ports" not in API and set(API["expose"]) == {"8000", "8001"}
    assert API["restart"] in ("always", "unless-stopped")
    assert "/v2/health/ready" in _shell_healthcheck(API["healthcheck"]["test"])
    assert "wget" in _shell_healthcheck(lb["healthcheck"]["test"])
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
    """The image's command with its ENV and the api service's environment, on a free loopback
    port: HOST and PORT come from the environment, as in the container."""
    mounts = _mounts(API, compose_dirs)
    (cmd,) = _instructions("api", "CMD")
    argv = [sys.executable, *json.loads(cmd.split(None, 1)[1])[1:]]
    env = {**_image_env("api"), **_environment(API, mounts)}
    env["MODEL_REPOSITORY"] = _localise(_image_env("api")["MODEL_REPOSITORY"], mounts)
    # The container's 0.0.0.0:8000/8001, kept on loopback on free ports here.
    env.update(HOST="127.0.0.1", PORT="0", GRPC_PORT="0")
    with server_process(argv, env=env) as server:
        yield server.address


def _healthcheck(address: str) -> int:
    """The compose healthcheck's own shell command, pointed at this server's port."""
    command = _shell_healthcheck(API["healthcheck"]["test"])
    assert command.startswith("python ")
    command = shlex.quote(sys.executable) + command[len("python") :]
    command = command.replace("127.0.0.1:8000", address)
    return subprocess.run(["sh", "-c", command], capture_output=True, timeout=30).returncode


def _image_healthcheck(address: str) -> int:
    """The Dockerfile's HEALTHCHECK, which reads PORT from the environment."""
    (healthcheck,) = _instructions("api", "HEALTHCHECK")
    command = _shell_healthcheck(healthcheck.split(" CMD ", 1)[1])
    command = shlex.quote(sys.executable) + command[len("python") :]
    env = {**os.environ, "PORT": address.rsplit(":", 1)[1]}
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, timeout=30
    ).returncode


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
