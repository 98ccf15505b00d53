"""What the Dockerfile and the images' lock files promise that running the images cannot show
(the container suite, ``make image-check``, builds and runs them): dependencies installed from the
locks before any source is copied, base images as build arguments, build secrets kept out of
ARG and ENV, local files kept out of the build context, and locks that match pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from tests.support.servers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each named stage, continuation lines joined, comments dropped."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (raw.strip() for raw in DOCKERFILE.replace("\\\n", " ").splitlines()):
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        else:
            current.append(line)
    return stages


def test_dependencies_are_installed_from_the_lock_before_sources_are_copied() -> None:
    """A source or README edit must not reinstall the dependencies: in every stage the lock is
    COPYed (a bind mount's contents are not in podman's cache key, so a changed lock would reuse
    a stale layer) and installed by the next line, before any COPY of the project."""
    stages = dockerfile_stages()
    for stage, lock in (("api", "api.txt"), ("api-gpu", "api-gpu.txt"), ("trainer", "trainer.txt")):
        lines = stages[stage]
        copy = next(i for i, line in enumerate(lines) if f"requirements/{lock}" in line)
        assert lines[copy].startswith("COPY "), f"{stage}: the lock must be COPYed"
        install = copy + 1
        assert f"--requirement /tmp/deps/{lock}" in lines[install], lines[install]
        assert "type=bind" not in lines[install]
        copies = [i for i, line in enumerate(lines) if line.upper().startswith("COPY ")]
        assert all(i > install for i in copies if i != copy), f"{stage}: COPY before the deps"
        # The project itself goes in last, without touching the locked set.
        installs = [line for line in lines if "pip install" in line and " ." in line]
        assert all("--no-deps" in line for line in installs), installs


def test_base_images_are_build_arguments_and_no_frontend_image_is_fetched() -> None:
    assert not re.search(r"^#\s*syntax=", DOCKERFILE, re.M), "a frontend image needs Docker Hub"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    assert dockerfile_stages()["base"][0] == "FROM ${PYTHON_IMAGE}"


def test_build_secrets_and_local_files_stay_out_of_images() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "build", ".hypothesis", ".git", ".venv", "data"} <= ignored
    # pip's CA and index settings reach a build as secrets only, never as ARG or ENV.
    assert not re.search(r"^(ARG|ENV)\b.*(PIP_CERT|PIP_INDEX|PIP_EXTRA|CERT)", DOCKERFILE, re.M)
    for stage, lines in dockerfile_stages().items():
        for line in lines:
            if "pip-install.sh" in line and line.startswith("RUN"):
                assert "type=secret,id=pip_ca" in line, stage
                assert "type=secret,id=pip_conf" in line, stage


def pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)
    }


def project_requirements(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=!~ ;]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_the_image_runs_one_worker() -> None:
    """A container's CPU quota is invisible to WORKERS=auto (sched_getaffinity): one process."""
    api = DOCKERFILE[DOCKERFILE.index("AS api\n") : DOCKERFILE.index("AS api-gpu")]
    assert re.search(r"^\s+WORKERS=1 \\$", api, re.M)


def test_locks_pin_every_dependency_of_pyproject() -> None:
    """requirements/*.txt come from pyproject.toml (make lock); stale locks miss a package."""
    for lock, extras in (
        ("api.txt", ("cpu",)),
        ("api-gpu.txt", ("gpu",)),
        ("trainer.txt", ("cpu", "train")),
    ):
        missing = project_requirements(*extras) - set(pins(lock))
        assert not missing, f"{lock} lacks {missing}: run make lock"
        assert "make lock" in (ROOT / "requirements" / lock).read_text()
    api, gpu, trainer = pins("api.txt"), pins("api-gpu.txt"), pins("trainer.txt")
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
