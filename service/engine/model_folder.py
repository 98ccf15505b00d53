"""A repository's model folders (``scan_models``) and what one says about the whole model, read
on every poll: its ``config.pbtxt`` (tensors, labels, version policy, batching) or why it cannot
be used, the runtime options it asks for, and the signature of the files read, so a changed file
reloads the model."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from service.core.errors import InvalidConfig
from service.core.limits import MAX_NAME_CHARS
from service.core.version_policy import CONFIG_FILE, VersionPolicy, read_model_config
from service.engine.batching_options import batching_options
from service.engine.runtime import RuntimeOptions
from service.engine.triton_config import (
    CONFIG_PBTXT,
    FileStat,
    TritonConfig,
    config_stat,
    read_config,
)
from service.engine.version_folder import ModelState, ModelVersion

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_CHARS - 1}}}$")


def scan_models(root: Path) -> Iterator[tuple[str, tuple[Path, dict[int, Path]]]]:
    """Each model folder under ``root`` with its version folders: (name, (folder, versions))."""
    if not root.is_dir():
        return
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not NAME_PATTERN.match(model_dir.name):
            continue
        versions = version_dirs(model_dir)
        if versions:  # a folder holding only a publish's .tmp-* is not a model yet
            yield model_dir.name, (model_dir, versions)


def version_dirs(model_dir: Path) -> dict[int, Path]:
    return {
        int(d.name): d
        for d in model_dir.iterdir()
        if d.is_dir()
        and d.name.isascii()
        and d.name.isdigit()
        and len(d.name) <= 9
        and int(d.name) > 0
    }


@dataclass(frozen=True)
class FolderConfig:
    """A model folder's config.pbtxt: ``present`` or not, read (``config``) or refused (the
    error, which makes every version UNAVAILABLE with its message)."""

    present: bool
    config: TritonConfig | InvalidConfig | None = None
    options: RuntimeOptions | None = None  # None: the repository's
    signature: tuple[FileStat, ...] = ()

    @property
    def policy(self) -> VersionPolicy | None:
        return self.config.version_policy if isinstance(self.config, TritonConfig) else None


def config_options(config: TritonConfig, base: RuntimeOptions) -> RuntimeOptions:
    """``base`` with the file's batching, by the rule a load's override follows; without a
    ``dynamic_batching`` block each request runs alone, as in Triton."""
    try:
        options = batching_options(config.batching, base)
    except InvalidConfig as exc:
        raise InvalidConfig(f"{CONFIG_PBTXT}: {exc.message}") from None
    batching = config.batching.dynamic_batching and config.max_batch_size > 0
    return replace(options, dynamic_batching=batching)


def model_policy(
    model_dir: Path,
    folder: FolderConfig,
    default: VersionPolicy,
    kept: tuple[VersionPolicy, str] | None,
) -> tuple[VersionPolicy, str]:
    """The model's version policy and why its ``config.json`` could not be read ("": it could):
    config.pbtxt's, else config.json's, else ``default``; an unreadable file keeps the policy in
    force (``kept``: it and the last error; None: a new model)."""
    if folder.present:  # config.pbtxt's policy, or the server's
        return folder.policy or default, ""
    try:
        policy = read_model_config(model_dir)
    except InvalidConfig as exc:
        in_force = kept[0] if kept else default
        if kept is None or kept[1] != exc.message:
            log.error("%s; keeping version policy %s", exc.message, in_force)
        return in_force, exc.message
    return policy or default, ""


def read_folder_config(model_dir: Path, gpu_host: bool, base: RuntimeOptions) -> FolderConfig:
    """The folder's config.pbtxt, if it has one (``config.json`` is then refused beside it)."""
    stat = config_stat(model_dir)
    if stat is None and not (model_dir / CONFIG_PBTXT).is_symlink():
        return FolderConfig(present=False)
    try:
        if (model_dir / CONFIG_FILE).exists():
            raise InvalidConfig(
                f"both {CONFIG_PBTXT} and {CONFIG_FILE} configure this model; keep one "
                f"(a version_policy goes into {CONFIG_PBTXT})"
            )
        config = read_config(model_dir, gpu_host)
        if config is None:  # removed between the two looks
            return FolderConfig(present=False)
        return FolderConfig(True, config, config_options(config, base), config.signature)
    except InvalidConfig as exc:
        return FolderConfig(True, exc, None, (stat,))


@dataclass(frozen=True)
class ServedModel:
    """A model folder as served: its versions' states, its policy, and whether a repository
    call unloaded it or loaded it with a config override."""

    name: str
    path: Path
    versions: dict[int, ModelVersion]
    policy: VersionPolicy
    policy_error: str = ""  # config.json could not be read; ``policy`` is the one kept
    unloaded: bool = False  # by a repository request: the poller leaves the model alone
    options: RuntimeOptions | None = None  # a load's config override; None: the repository's
    served: int | None = field(init=False)  # the version unversioned URLs use

    def __post_init__(self) -> None:
        by_state: dict[ModelState, list[int]] = {}
        for number, entry in self.versions.items():
            by_state.setdefault(entry.state, []).append(number)
        # The highest ready version; else the failure to report; else whatever is on disk.
        served = (
            by_state.get(ModelState.READY)
            or by_state.get(ModelState.UNAVAILABLE)
            or list(self.versions)
        )
        object.__setattr__(self, "served", max(served, default=None))
