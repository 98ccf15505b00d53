"""The api-gpu image (``make image-check`` without ``--no-gpu``, where the disk allows): pinned
onnxruntime-gpu whose CUDA libraries load up to the driver; run without a GPU it serves on the
CPU and says so, unless REQUIRE_PROVIDERS=true (its compose setting) keeps it unready. CUDA
sessions themselves are not exercised: this machine has no GPU."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.classify import wait_http
from tests.support.engines import Engine
from tests.support.image_builds import Builder, BuiltImage

pytestmark = [pytest.mark.containers, pytest.mark.incremental]

NO_GRPC = ["-e", "GRPC_PORT=-1", "-p", "127.0.0.1::8000"]


@pytest.fixture(scope="module")
def gpu_image(
    pytestconfig: pytest.Config, engine: Engine, builder: Builder, image_work: Path
) -> BuiltImage:
    if pytestconfig.getoption("no_gpu"):
        pytest.skip("--no-gpu")
    free_gb, needed = (
        shutil.disk_usage(image_work).free / 1e9,
        pytestconfig.getoption("gpu_min_free_gb"),
    )
    if free_gb < needed:
        pytest.skip(f"{free_gb:.0f} GB free, {needed:.0f} needed")
    seconds = builder.build("api-gpu", "cifar-serve-api-gpu")
    return BuiltImage(
        "cifar-serve-api-gpu", f"{seconds:.0f} s, {engine.image_size('cifar-serve-api-gpu')}"
    )


def test_api_gpu_loads_every_cuda_library_up_to_the_driver(
    engine: Engine, gpu_image: BuiltImage, record_property: Callable[[str, object], None]
) -> None:
    """Built with the pinned onnxruntime-gpu and pip check; only libcuda.so.1 is missing."""
    engine("run", "--rm", gpu_image.tag, "pip", "check")
    probe = (
        "import onnxruntime as ort; from service.engine.providers import "
        "preload_provider_libraries, provider_problem; preload_provider_libraries(); "
        "print(ort.__version__, ort.get_available_providers()); "
        "print(provider_problem('CUDAExecutionProvider'))"
    )
    out = engine("run", "--rm", gpu_image.tag, "python", "-c", probe).stdout
    assert "CUDAExecutionProvider" in out.splitlines()[0], out
    problem = out.splitlines()[-1]
    assert "cannot load" not in problem, f"a CUDA library is missing: {problem}"
    assert "libcuda.so.1" in problem, f"not just the driver: {problem}"
    record_property("detail", f"built in {gpu_image.how}; {out.split()[0]}; {problem[-90:]}")


def test_api_gpu_without_a_gpu_serves_on_the_cpu_with_a_warning_and_the_fallback_gauge(
    engine: Engine, gpu_image: BuiltImage, record_property: Callable[[str, object], None]
) -> None:
    api = engine.start("-e", "REQUIRE_PROVIDERS=false", *NO_GRPC, gpu_image.tag)
    rest = engine.published(api, 8000)
    wait_http(f"http://{rest}/v2/health/ready", timeout_s=120)
    warned = [line for line in engine.logs(api).splitlines() if "WARNING" in line]
    assert any("libcuda.so.1" in line for line in warned), f"no WARNING naming libcuda: {warned}"
    meta = httpx.get(f"http://{rest}/v2/models/cifar10_cnn").json()
    assert meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"], meta
    metrics = httpx.get(f"http://{rest}/metrics").text
    fallback = r'model_provider_fallback\{model="cifar10_cnn",version="\d+"\} 1'
    assert re.search(fallback, metrics), "no model_provider_fallback 1"
    engine.remove(api)
    record_property("detail", "WARNING names libcuda.so.1, CPU in /v2/models, fallback gauge 1")


def test_api_gpu_with_require_providers_stays_unready_without_a_gpu(
    engine: Engine, gpu_image: BuiltImage, record_property: Callable[[str, object], None]
) -> None:
    strict = engine.start("-e", "REQUIRE_PROVIDERS=true", *NO_GRPC, gpu_image.tag)
    rest = engine.published(strict, 8000)
    wait_http(f"http://{rest}/v2/health/live", timeout_s=120)
    time.sleep(3)  # loading finishes; no model may turn ready
    ready = httpx.get(f"http://{rest}/v2/health/ready", timeout=5)
    assert ready.status_code == 503, f"REQUIRE_PROVIDERS=true but ready: {ready.text}"
    record_property("detail", "REQUIRE_PROVIDERS=true: 503")
