"""The files each version was last loaded from, kept where every worker of a group reads them
(``WORKERS_DIR/last-good``), so a worker started while a served version's files are bad on disk
loads what its siblings still serve ("changed on disk and the new files fail, serving the
previous") and not an older version, or none: the workers answer alike.

One copy per version, laid out as a repository of its own so it is read by the same code:

    <name>/<version>/current              the key of the copy in force
    <name>/<version>/<key>/<name>/        config.pbtxt and its labels file, as read
    <name>/<version>/<key>/<name>/<version>/  model.onnx and card.json, as loaded

The key is a hash of those files, so a worker finding the same key in ``current`` writes
nothing: one copy per change, however many workers load it. A copy lives as long as the server
run (``python -m service`` empties the folder at start)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Mapping
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


def _inside(relative: PurePosixPath) -> bool:
    return not relative.is_absolute() and ".." not in relative.parts


class LastGood:
    """The copies in ``folder``: ``keep`` after each load, ``recall`` when one fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _version(self, name: str, version: int) -> Path:
        return self.folder / name / str(version)

    def keep(self, name: str, version: int, loaded: Loaded) -> None:
        """Make ``loaded`` the version's copy in force (a failure is logged, never raised: the
        load it follows has succeeded)."""
        key = loaded.key()
        where = self._version(name, version)
        try:
            if (where / CURRENT).read_text(encoding="ascii") == key:
                return
        except OSError:
            pass
        try:
            self._write(where, key, loaded.files(name, version))
        except OSError as exc:
            log.warning("%s v%d: no copy kept for restarted workers: %s", name, version, exc)
            return
        for old in where.iterdir():  # copies no longer in force
            if old.is_dir() and old.name != key and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _write(where: Path, key: str, files: dict[PurePosixPath, bytes]) -> None:
        if not all(_inside(relative) for relative in files):
            raise OSError(f"a config file outside its model folder: {sorted(map(str, files))}")
        where.mkdir(parents=True, exist_ok=True)
        if not (where / key).is_dir():
            temporary = where / f".tmp-{os.getpid()}-{key}"
            shutil.rmtree(temporary, ignore_errors=True)
            for relative, data in files.items():
                path = temporary.joinpath(*relative.parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            try:
                temporary.rename(where / key)
            except OSError:  # another worker's rename came first: the same files
                shutil.rmtree(temporary, ignore_errors=True)
                if not (where / key).is_dir():
                    raise
        pointer = where / f".tmp-{os.getpid()}-{CURRENT}"
        pointer.write_text(key, encoding="ascii")
        os.replace(pointer, where / CURRENT)

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

    def recall(self, name: str, version: int) -> Path | None:
        """The copy in force: the root of a repository holding ``name``/``version`` (None:
        no worker has loaded this version in this run)."""
        where = self._version(name, version)
        try:
            key = (where / CURRENT).read_text(encoding="ascii")
        except OSError:
            return None
        root = where / key
        return root if (root / name / str(version)).is_dir() else None

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
        root = self.recall(failed.name, failed.version)
        if root is None:
            return failed
        path = root / failed.name / str(failed.version)
        folder = read_folder_config(path.parent, gpu_host, base)
        in_force = override or folder.options or base
        copy = replace(failed, path=path, state=ModelState.UNLOADED)
        entry = load_entry(copy, signature, in_force, root, missing, folder.config)
        if entry.state is not ModelState.READY:
            return failed
        reason = f"changed on disk and the new files fail, serving the previous: {failed.reason}"
        log.error("%s v%d %s (the group's copy)", failed.name, failed.version, reason)
        return replace(entry, path=failed.path, reason=reason)
