"""Which model versions a statistics request covers (Triton's statistics extension): every loaded
version of every model, of one model, or one version (404 unknown, 503 not loaded)."""

from __future__ import annotations

from service.engine.repository import ModelRepository
from service.engine.statistics import VersionStatistics


def collect_statistics(
    repository: ModelRepository, name: str | None, version: str | None
) -> list[VersionStatistics]:
    """The statistics of the versions named, each labelled with its own name and version."""
    if name is None:
        names = repository.names()
    elif version is not None:
        runtime = repository.get(name, version)  # 404 unknown, 503 not ready
        return [runtime.statistics.snapshot(runtime.name, runtime.version)]
    else:
        names = [name]
    return [
        entry.runtime.statistics.snapshot(model, entry.version)
        for model in names
        for entry in repository.versions(model)  # 404 for an unknown model
        if entry.runtime is not None
    ]
