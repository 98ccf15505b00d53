"""The files each version was last loaded from, kept where every worker of a group reads them
(``WORKERS_DIR/last-good``), so a worker started while a served version's files are bad on disk
loads what its siblings still serve ("changed on disk and the new files fail, serving the
previous") and not an older version, or none: the workers answer alike.

One copy per version, laid out as a repository of its own so it is read by the same code:

    <name>/<version>/current              the key of the copy in force
    <name>/<version>/<key>/<name>/        config.pbtxt and its labels file, as read
    <name>/<version>/<key>/<name>/<version>/  model.onnx and card.json, as loaded

The key is a hash of those files, so a worker finding the same key in ``current`` writes
nothing: one copy per change, however many workers load it. Only a starting worker loads a
copy, and a copy goes once its version is no longer served (``forget``, ``prune``); none
outlives the server's run (``python -m service`` empties the folder at start)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from service.engine.model_folder import read_folder_config
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import (
    Loaded,
    ModelState,
    ModelVersion,
    Signature,
    load_entry,
)

log = logging.getLogger(__name__)

LAST_GOOD = "last-good"  # the copies' folder in WORKERS_DIR
CURRENT = "current"
LOCK = ".lock"


def _inside(relative: PurePosixPath) -> bool:
    return not relative.is_absolute() and ".." not in relative.parts


class LastGood:
    """The copies in ``folder``: ``keep`` after each load, ``load`` from one while starting, and
    ``forget``/``prune`` once no worker serves the version. A version's copies change under an
    exclusive ``flock`` of its ``.lock`` and are loaded under a shared one, so no worker loads a
    copy another is replacing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _version(self, name: str, version: int) -> Path:
        return self.folder / name / str(version)

    @contextmanager
    def _locked(self, where: Path, how: int) -> Iterator[None]:
        where.mkdir(parents=True, exist_ok=True)
        with open(where / LOCK, "a+b") as lock:
            fcntl.flock(lock, how)
            yield

    def keep(self, name: str, version: int, loaded: Loaded) -> None:
        """Make ``loaded`` the version's copy in force (a failure is logged, never raised: the
        load it follows has succeeded)."""
        key, where = loaded.key(), self._version(name, version)
        try:
            with self._locked(where, fcntl.LOCK_EX):
                if _current(where) == key and (where / key).is_dir():
                    return
                self._write(where, key, loaded.files(name, version))
                for old in where.iterdir():  # copies no longer in force, a crashed write's
                    if old.is_dir() and old.name != key:
                        shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            log.warning("%s v%d: no copy kept for restarted workers: %s", name, version, exc)

    @staticmethod
    def _write(where: Path, key: str, files: dict[PurePosixPath, bytes]) -> None:
        if not all(_inside(relative) for relative in files):
            raise OSError(f"a config file outside its model folder: {sorted(map(str, files))}")
        temporary = where / f".tmp-{os.getpid()}-{key}"
        shutil.rmtree(temporary, ignore_errors=True)
        for relative, data in files.items():
            path = temporary.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        shutil.rmtree(where / key, ignore_errors=True)  # a crashed write's, half made
        temporary.rename(where / key)
        pointer = where / f".tmp-{os.getpid()}-{CURRENT}"
        pointer.write_text(key, encoding="ascii")
        os.replace(pointer, where / CURRENT)

    def forget(self, name: str, version: int) -> None:
        """This worker no longer serves the version: neither, soon, does any (a repository
        call or the disk took it away), so no worker started later may serve it."""
        where = self._version(name, version)
        if where.is_dir():
            with self._locked(where, fcntl.LOCK_EX):
                for old in where.iterdir():
                    if old.name != LOCK:
                        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def prune(self, disk: Mapping[str, Collection[int]]) -> None:
        """Remove the copies of versions no longer in the repository (``disk``: each model's
        version numbers); never on shutdown, when a restarting sibling may still need them."""
        try:
            versions = [v for model in self.folder.iterdir() for v in model.iterdir()]
        except OSError:  # none kept yet, or another worker pruning
            return
        for version in versions:
            kept = disk.get(version.parent.name, ())
            if not version.name.isdigit() or int(version.name) not in kept:
                shutil.rmtree(version, ignore_errors=True)

    def load(
        self,
        failed: ModelVersion,
        signature: Signature,
        override: RuntimeOptions | None,
        base: RuntimeOptions,
        gpu_host: bool,
        missing: Collection[str],
    ) -> ModelVersion:
        """A version failing on disk loaded from the copy the group's other workers serve it
        from (this worker started after its files went bad); else ``failed``. The options are
        the repository's: a load's ``override``, else the copy's config.pbtxt's, else ``base``."""
        where = self._version(failed.name, failed.version)
        if not (where / CURRENT).is_file():
            return failed
        with self._locked(where, fcntl.LOCK_SH):
            root = where / str(_current(where))
            path = root / failed.name / str(failed.version)
            if not path.is_dir():
                return failed
            folder = read_folder_config(path.parent, gpu_host, base)
            in_force = override or folder.options or base
            copy = replace(failed, path=path, state=ModelState.UNLOADED)
            entry = load_entry(copy, signature, in_force, root, missing, folder.config)
        if entry.state is not ModelState.READY:
            return failed
        reason = f"changed on disk and the new files fail, serving the previous: {failed.reason}"
        log.error("%s v%d %s (the group's copy)", failed.name, failed.version, reason)
        return replace(entry, path=failed.path, reason=reason)


def _current(where: Path) -> str | None:
    """The key of the version's copy in force (None: none)."""
    try:
        return (where / CURRENT).read_text(encoding="ascii")
    except OSError:
        return None
