"""The api image, built and run as a user would (``make image-check``): slim, non-root, no build
secrets; run as in Kubernetes it classifies real CIFAR-10 images over REST and gRPC exactly as a
local ``python -m service`` does, takes HOST/PORT from the environment and drains on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.classify import infer_grpc, infer_rest, local_server, real_images, wait_http
from tests.support.engines import Engine
from tests.support.image_builds import Builder, BuiltImage, build_secrets_left
from tests.support.servers import ROOT

pytestmark = [pytest.mark.containers, pytest.mark.incremental]

MODELS = ("cifar10_cnn", "cifar10_cnn_bn")  # classified through the image and locally


@dataclass(frozen=True)
class RunningApi:
    container: str
    rest: str  # 127.0.0.1:<port> published for 8000
    grpc: str  # and for 8001


@pytest.fixture(scope="module")
def k8s(image_work: Path) -> list[str]:
    """The Kubernetes settings (deploy/k8s) as run flags, with a copy of models/ read-only."""
    models = image_work / "api-models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns(".*"))
    flags = ["--user", "10001:10001", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    return [*flags, "--security-opt", "no-new-privileges", "-v", f"{models}:/models:ro"]


@pytest.fixture(scope="module")
def api(engine: Engine, api_image: BuiltImage, k8s: list[str]) -> Iterator[RunningApi]:
    ports = ["-p", "127.0.0.1::8000", "-p", "127.0.0.1::8001"]
    container = engine.start(*k8s, *ports, api_image.tag)
    running = RunningApi(
        container, engine.published(container, 8000), engine.published(container, 8001)
    )
    wait_http(f"http://{running.rest}/v2/health/ready")
    yield running
    engine.remove(container)


def test_api_image_has_no_torch_a_clean_pip_check_no_build_secrets_and_runs_as_app(
    engine: Engine,
    api_image: BuiltImage,
    builder: Builder,
    record_property: Callable[[str, object], None],
) -> None:
    image = api_image.tag
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    found = engine("run", "--rm", image, "python", "-c", probe, check=False)
    assert found.returncode == 0, "torch is importable in the api image"
    engine("run", "--rm", image, "pip", "check")
    assert build_secrets_left(engine, image, builder.secrets) == []
    user = engine("inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == "app", f"runs as {user!r}, not app"
    record_property("detail", f"built in {api_image.how}; torch absent, pip check clean, "
                    "USER app, no pip settings in ENV/history")  # fmt: skip


def test_api_runs_as_in_kubernetes_uid_10001_read_only_models(
    engine: Engine, api: RunningApi, record_property: Callable[[str, object], None]
) -> None:
    uid = engine("exec", api.container, "id", "-u").stdout.strip()
    assert uid == "10001", f"runs as uid {uid}"
    write = engine("exec", api.container, "touch", "/models/x", check=False)
    assert write.returncode != 0, "the models mount is writable"
    record_property("detail", f"ready on {api.rest}, gRPC {api.grpc}")


def test_api_healthcheck_command_passes(
    engine: Engine,
    api: RunningApi,
    api_image: BuiltImage,
    record_property: Callable[[str, object], None],
) -> None:
    command = engine.healthcheck_command(api_image.tag)
    engine("exec", api.container, *command, timeout=30)
    record_property("detail", " ".join(command)[:60] + "... exit 0")


def test_real_images_classified_over_rest_and_grpc_as_make_serve_does(
    api: RunningApi, pytestconfig: pytest.Config, record_property: Callable[[str, object], None]
) -> None:
    images, labels = real_images(pytestconfig.getoption("images"))
    found = []
    with local_server(ROOT / "models") as local:
        for model in MODELS:
            want = infer_rest(local["rest"], model, images)
            for protocol, got in (
                ("REST", infer_rest(api.rest, model, images)),
                ("gRPC", infer_grpc(api.grpc, model, images)),
            ):
                assert got.shape == want.shape, f"{model} {protocol}: shape {got.shape}"
                assert (got.argmax(1) == want.argmax(1)).all(), f"{model} {protocol}: classes"
                assert np.allclose(got, want, atol=1e-5), f"{model} {protocol}: probabilities"
            meta = httpx.get(f"http://{api.rest}/v2/models/{model}", timeout=10).json()
            classes = meta["parameters"]["class_names"]
            top = want.argmax(1)
            right = sum(classes[i] == label for i, label in zip(top, labels, strict=True))
            found.append(f"{model} {right}/{len(labels)} right")
    record_property("detail", "; ".join(found))


def test_host_and_port_come_from_the_environment(
    engine: Engine,
    api_image: BuiltImage,
    k8s: list[str],
    record_property: Callable[[str, object], None],
) -> None:
    """The image's CMD has no flags, so PORT (and GRPC_PORT) from the environment move it."""
    env = ["-e", "PORT=9000", "-e", "GRPC_PORT=-1"]
    moved = engine.start(*k8s, *env, "-p", "127.0.0.1::9000", api_image.tag)
    address = engine.published(moved, 9000)
    wait_http(f"http://{address}/v2/health/ready")
    engine.remove(moved)
    record_property("detail", f"PORT=9000 served on {address}")


def test_sigterm_during_requests_answers_every_one_and_exits_0(
    engine: Engine, api: RunningApi, record_property: Callable[[str, object], None]
) -> None:
    """The last check here: it stops the api container."""
    ten, _ = real_images(10)
    batch = np.concatenate([ten] * 60)  # 3 x 600 images: under MAX_QUEUE_IMAGES, ~1 s each
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(infer_rest, api.rest, "cifar10_cnn_bn", batch) for _ in range(3)]
        time.sleep(0.3)
        assert not all(f.done() for f in futures), "requests finished before the signal"
        sent = time.monotonic()
        engine("kill", "--signal", "TERM", api.container)
        answered = [f.result().shape for f in futures]
    code = engine("wait", api.container, timeout=60).stdout.strip().splitlines()[-1]
    took = time.monotonic() - sent
    assert code == "0", f"exit status {code}:\n{engine.logs(api.container)[-1500:]}"
    record_property("detail", f"{len(answered)} requests of 600 images answered, exit 0 "
                    f"{took:.1f} s after")  # fmt: skip
