"""What a model folder says about the whole model, read on every poll: its ``config.pbtxt``
(tensors, labels, version policy, batching) or why it cannot be used, the runtime options it
asks for, and the signature of the files read, so a changed file reloads the model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from service.core.errors import InvalidConfig
from service.core.version_policy import CONFIG_FILE, VersionPolicy
from service.engine.batching_options import batching_options
from service.engine.runtime import RuntimeOptions
from service.engine.triton_config import (
    CONFIG_PBTXT,
    FileStat,
    TritonConfig,
    config_stat,
    read_config,
)


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
