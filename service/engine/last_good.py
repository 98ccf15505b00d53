"""The files each version was last loaded from, kept where every worker of a group reads them
(``WORKERS_DIR/last-good``), so a worker started while a served version's files are bad on disk
loads what its siblings still serve ("changed on disk and the new files fail, serving the
previous") and not an older version, or none: the workers answer alike.

One copy per version, laid out as a repository of its own so it is read by the same code:

    <name>/<version>/current              the key of the copy in force
    <name>/<version>/<key>/batching.json  the batching its runtime was built with
    <name>/<version>/<key>/<name>/        config.pbtxt and its labels file, as read
    <name>/<version>/<key>/<name>/<version>/  model.onnx and card.json, as loaded

The key is a hash of those, so a worker finding the same key in ``current`` writes nothing: one
copy per change, however many workers load it. A key's folder is written once and never
changed, and ``current`` is replaced in one rename, so no lock is needed: a copy is removed
only ``GRACE_S`` after it went out of force, long after any worker that read its key has
loaded it. Only a starting worker loads a copy, and a version's copy stops being in
force (``forget``) once this worker no longer serves it; none outlives the server's run
(``python -m service`` empties the folder at start). Nothing here raises: a copy is a spare."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath

from service.engine.model_folder import read_folder_config
from service.engine.runtime import RuntimeOptions
from service.engine.version_folder import (
    BATCHING_FILE,
    Loaded,
    ModelState,
    ModelVersion,
    Signature,
    load_entry,
)

log = logging.getLogger(__name__)

LAST_GOOD = "last-good"  # the copies' folder in WORKERS_DIR
CURRENT = "current"
GRACE_S = 600.0  # how long a copy no longer in force stays, for a worker loading it


def _inside(relative: PurePosixPath) -> bool:
    return not relative.is_absolute() and ".." not in relative.parts


class LastGood:
    """The copies in ``folder``: ``keep`` after each load, ``load`` from one while starting,
    ``forget`` once the version is not served here, ``prune`` what no longer is in force."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _version(self, name: str, version: int) -> Path:
        return self.folder / name / str(version)

    def keep(self, name: str, version: int, loaded: Loaded) -> None:
        """Make ``loaded`` the version's copy in force (a failure is logged: the load it follows
        has succeeded)."""
        key, where = loaded.key(), self._version(name, version)
        try:
            for _ in range(2):  # again if a sibling's prune took the folder as it came back
                if _current(where) == key and (where / key).is_dir():
                    break
                self._write(where, key, loaded.files(name, version))
        except OSError as exc:
            log.warning("%s v%d: no copy kept for restarted workers: %s", name, version, exc)

    @staticmethod
    def _write(where: Path, key: str, files: dict[PurePosixPath, bytes]) -> None:
        if not all(_inside(relative) for relative in files):
            raise OSError(f"a config file outside its model folder: {sorted(map(str, files))}")
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
        before = _current(where)
        _retired(where / key)  # a key in force again starts its grace afresh
        pointer = where / f".tmp-{os.getpid()}-{CURRENT}"
        pointer.write_text(key, encoding="ascii")
        os.replace(pointer, where / CURRENT)
        if before is not None and before != key:
            _retired(where / before)

    def forget(self, name: str, version: int) -> None:
        """This worker no longer serves the version: neither, soon, does any (a repository call,
        the version policy or the disk took it away), so no worker started later may serve it."""
        try:
            _let_go(self._version(name, version))
        except OSError as exc:
            log.warning("%s v%d: its copy could not be let go: %s", name, version, exc)

    def prune(self, disk: Mapping[str, Collection[int]], now: float | None = None) -> None:
        """Let go of the copies of versions no longer on disk (``disk``: each model's version
        numbers), and remove every copy out of force for ``GRACE_S`` and what a crashed write
        left."""
        now = time.time() if now is None else now
        for where in _versions(self.folder):
            try:
                kept = disk.get(where.parent.name, ())
                if not where.name.isdigit() or int(where.name) not in kept:
                    _let_go(where)
                for old in where.iterdir():
                    if old.name == CURRENT or now - old.lstat().st_mtime < GRACE_S:
                        continue
                    if old.name == _current(where):  # read again: a keep may have made it so
                        continue
                    doomed = where / f".tmp-gone-{os.getpid()}-{old.name}"
                    old.rename(doomed)  # so a worker loading finds it whole or not at all
                    if doomed.is_dir():
                        shutil.rmtree(doomed)
                    else:
                        doomed.unlink()
                if not any(where.iterdir()):
                    where.rmdir()
                    where.parent.rmdir()  # refused while other versions are in it
            except OSError:  # another worker pruning too
                continue

    def load(
        self,
        failed: ModelVersion,
        signature: Signature,
        base: RuntimeOptions,
        gpu_host: bool,
        missing: Collection[str],
    ) -> ModelVersion:
        """A version failing on disk loaded from the copy the group's other workers serve it
        from (this worker started after its files went bad); else ``failed``. Its batching is
        the copy's, as the others built it (all a config or an override changes), the rest of
        the options ``base``, the repository's."""
        where = self._version(failed.name, failed.version)
        key = _current(where)
        if key is None or not (where / key).is_dir():
            return failed
        root = where / key
        path = root / failed.name / str(failed.version)
        try:
            folder = read_folder_config(path.parent, gpu_host, base)
            batching = json.loads((root / BATCHING_FILE).read_text(encoding="ascii"))
            # what the others' runtime was built with: a load whose override came after the
            # files went bad kept their runtime as it was, though the group recorded it
            in_force = replace(base, **batching)
        except (OSError, ValueError, TypeError):
            return failed
        copy = replace(failed, path=path, state=ModelState.UNLOADED)
        # its external data files, if any, are the version folder's (a copy holds none)
        entry = load_entry(
            copy, signature, in_force, root, missing, folder.config, None, failed.path
        )
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


def _let_go(where: Path) -> None:
    """No copy of the version in force any more; its files go ``GRACE_S`` from now."""
    key = _current(where)
    (where / CURRENT).unlink(missing_ok=True)
    if key is not None:
        _retired(where / key)


def _retired(copy: Path) -> None:
    """Mark when ``copy`` went out of force (its mtime), for ``prune``'s grace."""
    with contextlib.suppress(OSError):
        os.utime(copy)


def _versions(folder: Path) -> list[Path]:
    """Every ``<name>/<version>`` folder of copies (none where a listing fails)."""
    found: list[Path] = []
    with contextlib.suppress(OSError):  # none kept yet
        for model in list(folder.iterdir()):
            with contextlib.suppress(OSError):  # a sibling removing it
                found += [v for v in model.iterdir() if v.is_dir()]
    return found
