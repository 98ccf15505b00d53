"""Which model versions a statistics request covers (Triton's statistics extension): every loaded
version of every model, of one model, or one version (404 unknown, 503 not loaded)."""

from __future__ import annotations

from service.core.errors import InvalidInput, ModelNotFound
from service.engine.repository import ModelRepository
from service.engine.statistics import VersionStatistics


def collect_statistics(
    repository: ModelRepository, name: str | None, version: str | None
) -> list[VersionStatistics]:
    """The statistics of the versions named, each labelled with its own name and version."""
    if name is None:
        if version is not None:
            raise InvalidInput("statistics of a version need the model's name")
        return [s for model in repository.names() for s in _loaded(repository, model, True)]
    if version is not None:
        runtime = repository.get(name, version)  # 404 unknown, 503 not ready
        return [runtime.statistics.snapshot(runtime.name, runtime.version, runtime.pending)]
    return _loaded(repository, name, False)


def _loaded(repository: ModelRepository, name: str, gone_ok: bool) -> list[VersionStatistics]:
    """Every loaded version of ``name``; ``gone_ok``: none for a model removed meanwhile."""
    try:
        versions = repository.versions(name)  # 404 for an unknown model
    except ModelNotFound:
        if gone_ok:
            return []
        raise
    return [
        entry.runtime.statistics.snapshot(name, entry.version, entry.runtime.pending)
        for entry in versions
        if entry.runtime is not None
    ]
