"""The model repository: scan ``<root>/<name>/<version>/``, check each card against its graph, load,
and keep the served set in line with the disk while serving (``poll``, ``watch``).

Which versions are served is the model's version policy (Triton's: latest N, all, specific; from
``<name>/config.pbtxt``, ``config.json`` or the default). A version failing its checks is
``UNAVAILABLE`` with the reason and passed over ("latest 1" serves the one before), and retried
once its files change (size, mtime, inode). ``.tmp-*`` folders and stray files are ignored.

Every update builds new ``ServedModel`` values on a worker thread and swaps the ``_models``
mapping in one assignment, so a request sees the old set or the new one. A replaced runtime is
retired: requests that took it (``get`` in ``leases.lease_scope``) finish on it, then it closes
(one version folder's checks and loading: ``version_folder``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.core import errors
from service.core.errors import ModelLoadFailed, ModelNotFound, ModelNotReady
from service.core.limits import MAX_NAME_CHARS
from service.core.version_policy import VersionPolicy, parse_version
from service.engine.last_good import LastGood
from service.engine.leases import held_runtimes
from service.engine.model_folder import (
    NAME_PATTERN,
    FolderConfig,
    ServedModel,
    model_policy,
    read_folder_config,
    scan_models,
    version_dirs,
)
from service.engine.providers import (
    GPU_PROVIDERS,
    preload_provider_libraries,
    provider_problem,
    resolve_providers,
)
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.version_folder import (
    ModelState,
    ModelVersion,
    Signature,
    files_signature,
    load_entry,
    stale,
)

log = logging.getLogger(__name__)

UNLOADED_BY_REQUEST = "unloaded by a repository request"


class ModelRepository:
    """Every model under ``root``: its versions, their states, and the loaded runtimes."""

    def __init__(
        self,
        root: Path,
        options: RuntimeOptions,
        policy: VersionPolicy | None = None,
        last_good: LastGood | None = None,
    ) -> None:
        self.root = root
        self.last_good = last_good  # a worker group's copies of what each version loaded
        self.options = options
        self.default_policy = policy or VersionPolicy()
        # replaced whole by updates, never changed in place
        self._models: dict[str, ServedModel] = {}
        self._update = threading.Lock()  # one update (poll, load, unload, close) at a time
        self._root_problem = ""  # why the last poll could not read the root, if it could not
        self._unavailable_providers: frozenset[str] = frozenset()  # not in this onnxruntime
        self._gpu_host = False
        self._start: tuple[frozenset[str], dict[str, RuntimeOptions]] = (frozenset(), {})
        self.loaded = False

    # -- updates (blocking: call them off the event loop) ----------------------------------

    def load(
        self, unloaded: Collection[str] = (), overrides: Mapping[str, RuntimeOptions] | None = None
    ) -> None:
        """The first scan and load, at start-up: ``unloaded`` models are not loaded and a load's
        ``overrides`` are in force from the start (a worker group's calls, taken before)."""
        self._start = (frozenset(unloaded), dict(overrides or {}))
        preload_provider_libraries()
        usable, missing = resolve_providers(self.options.providers)
        self._unavailable_providers = frozenset(missing)
        self._gpu_host = any(p in GPU_PROVIDERS for p in usable)  # config.pbtxt's KIND_GPU
        if missing:
            log.warning(
                "execution provider(s) %s not available here (%s); using %s",
                ", ".join(missing),
                "; ".join(provider_problem(p) for p in missing),
                ", ".join(usable),
            )
        if not self.root.is_dir():
            log.warning("model repository %s is not a folder; serving no models", self.root)
        try:
            self.poll()
        finally:
            self._start = (frozenset(), {})
        self.loaded = True

    def poll(self) -> None:
        """Bring the served versions in line with the disk: new, changed and removed ones."""
        with self._update:
            try:
                if self.loaded and not self.root.is_dir():
                    raise NotADirectoryError("not a folder")
                disk = dict(scan_models(self.root))
            except OSError as exc:
                if not self.loaded:
                    raise
                # A vanished or unreadable root is more likely an unmounted volume or a bad
                # permission than a wish to serve nothing: keep what is loaded, and say so.
                problem = f"the model repository cannot be read ({exc.strerror or exc})"
                if self._root_problem != problem:
                    log.error("%s; keeping the loaded models", problem)
                self._root_problem = problem
                return
            self._root_problem = ""
            for name in sorted(set(self._models) - set(disk)):
                log.info("model %s removed from the repository", name)
                self._publish(name, None)
            for name, (model_dir, versions) in disk.items():
                self._publish(name, self._update_model(name, model_dir, versions))
            if self.last_good is not None:
                self.last_good.prune({name: set(versions) for name, (_, versions) in disk.items()})

    def load_model(self, name: str, options: RuntimeOptions | None = None) -> None:
        """Load (or reload) a model from disk under its policy, failed versions retried too;
        ``options`` (a config override) stay the model's until a load without them, which
        goes back to the repository's.

        Raises ``ModelNotFound`` without a model folder, ``ModelLoadFailed`` when no version of
        it is ready afterwards.
        """
        with self._update:
            model_dir = self.root / name
            if not NAME_PATTERN.match(name) or not model_dir.is_dir():
                raise ModelNotFound(f"no model folder {errors.shown(name)} in the repository")
            versions = version_dirs(model_dir)
            model = self._update_model(
                name, model_dir, versions, retry_failed=True, unloaded=False, options=options
            )
            self._publish(name, model)
        if model is None:
            raise ModelLoadFailed(f"model {name!r} has no version folders")
        if not any(e.state is ModelState.READY for e in model.versions.values()):
            reasons = "; ".join(
                f"version {v}: {e.reason}" for v, e in sorted(model.versions.items()) if e.reason
            )
            raise ModelLoadFailed(f"no version of model {name!r} could be loaded: {reasons}")

    def unload_model(self, name: str) -> None:
        """Serve no version of a model until ``load_model``; in-flight requests finish."""
        with self._update:
            old = self._model(name)
            versions = {v: e.path for v, e in old.versions.items()}
            self._publish(name, self._update_model(name, old.path, versions, unloaded=True))

    async def watch(self, interval_s: float) -> None:
        """``poll`` every ``interval_s`` seconds on a worker thread, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("polling the model repository %s failed", self.root)

    def close(self) -> None:
        with self._update:
            self.loaded = False  # a worker shutting down leaves its copies to its siblings
            for name in list(self._models):
                self._publish(name, None)

    def _publish(self, name: str, model: ServedModel | None) -> None:
        """Swap in the model's new state, then retire the runtimes it no longer serves (and,
        while serving, forget their copies: a worker started later must not serve them)."""
        old = self._models.get(name)
        models = dict(self._models)
        if model is None:
            models.pop(name, None)
        else:
            models[name] = model
        self._models = models  # the atomic switch: requests from here on see the new state
        keep = {id(e.runtime) for e in (model.versions.values() if model else ()) if e.runtime}
        for entry in old.versions.values() if old else ():
            if entry.runtime is not None and id(entry.runtime) not in keep:
                log.info("%s v%d retired; it closes when its requests finish", name, entry.version)
                entry.runtime.retire()
                now = model.versions.get(entry.version) if model else None
                if self.last_good and self.loaded and (now is None or now.runtime is None):
                    self.last_good.forget(name, entry.version)  # never raises

    def _update_model(
        self,
        name: str,
        model_dir: Path,
        paths: dict[int, Path],
        *,
        retry_failed: bool = False,
        unloaded: bool | None = None,
        options: RuntimeOptions | None = None,
    ) -> ServedModel | None:
        """The model's next state: load what its policy wants and the disk has, drop the rest.
        A load passes its ``options`` (None: the repository's); other updates keep the model's."""
        if not paths:
            return None
        old, (start_unloaded, start_overrides) = self._models.get(name), self._start
        if not retry_failed:
            options = old.options if old else start_overrides.get(name)
        folder = read_folder_config(model_dir, self._gpu_host, self.options)
        in_force = options or folder.options or self.options
        previous = old.versions if old else {}
        if unloaded is None:
            unloaded = old.unloaded if old else name in start_unloaded
        kept = (old.policy, old.policy_error) if old else None
        policy, policy_error = model_policy(model_dir, folder, self.default_policy, kept)
        signatures = {v: files_signature(p) + folder.signature for v, p in paths.items()}
        versions = {
            v: replace(previous[v], path=p)
            if v in previous
            else ModelVersion(name, v, p, ModelState.UNLOADED)
            for v, p in paths.items()
        }
        wanted: set[int] = set()
        unchanged = [e for v, e in versions.items() if e.signature == signatures[v]]
        failed = {e.version for e in unchanged if e.state is ModelState.UNAVAILABLE}
        # Each version is tried once an update, and one served from memory since its files
        # failed waits, as a failed one does, for them to change or for a load call.
        tried = {e.version for e in unchanged if e.runtime is not None and e.reason}
        if retry_failed:
            failed, tried = set(), set()
        while not unloaded:
            # Failed versions are passed over, so the policy falls back to the ones that load.
            wanted = policy.select(v for v in versions if v not in failed)
            todo = [
                v
                for v in sorted(wanted - tried, reverse=True)
                if stale(versions[v], signatures[v], in_force)
            ]
            if not todo:
                break
            tried.update(todo)
            for v in todo:
                versions[v] = self._load(versions[v], signatures[v], in_force, folder)
                if versions[v].state is ModelState.UNAVAILABLE:
                    failed.add(v)
        for v, entry in versions.items():
            if v in wanted or (v in failed and not unloaded):
                continue
            reason = UNLOADED_BY_REQUEST if unloaded else ""
            versions[v] = replace(entry, state=ModelState.UNLOADED, reason=reason, runtime=None)
        return ServedModel(name, model_dir, versions, policy, policy_error, unloaded, options)

    def _load(
        self,
        entry: ModelVersion,
        signature: Signature,
        in_force: RuntimeOptions,
        folder: FolderConfig,
    ) -> ModelVersion:
        """One version's load; at start, when its files fail, from the worker group's copy (the
        other workers still serve it), if any."""
        missing, copies = self._unavailable_providers, self.last_good
        keep = copies.keep if copies else None
        loaded = load_entry(entry, signature, in_force, self.root, missing, folder.config, keep)
        if loaded.state is ModelState.UNAVAILABLE and copies and not self.loaded:
            return copies.load(loaded, signature, self.options, self._gpu_host, missing)
        return loaded

    # -- lookups (on the event loop; each reads one snapshot) ------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def provider_use(self) -> list[tuple[str, int, str, bool]]:
        """(model, version, the provider its session runs on first, whether a requested provider
        is missing) for every loaded version: the ``/metrics`` provider gauges."""
        rows = []
        for model in list(self._models.values()):
            for entry in model.versions.values():
                runtime = entry.runtime
                if entry.state is ModelState.READY and runtime is not None:
                    fell_back = bool(runtime.missing_providers)
                    rows.append((model.name, entry.version, runtime.providers[0], fell_back))
        return rows

    def versions(self, name: str) -> list[ModelVersion]:
        model = self._model(name)
        return [model.versions[v] for v in sorted(model.versions)]

    def _model(self, name: str) -> ServedModel:
        model = self._models.get(name) if len(name) <= MAX_NAME_CHARS else None
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"unknown model {errors.shown(name)} (served: {known})")
        return model

    def entry(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The version a request names (or the served one), whatever its state."""
        model = self._model(name)
        number = parse_version(version)
        if number is None:
            if model.served is None:
                raise ModelNotFound(f"model {errors.shown(name)} has no versions")
            number = model.served
        entry = model.versions.get(number)
        if entry is None:
            raise ModelNotFound(
                f"model {errors.shown(name)} has no version {number} (versions: "
                f"{', '.join(str(v) for v in sorted(model.versions)) or 'none'})"
            )
        return entry

    def get(self, name: str, version: str | int | None = None) -> ModelRuntime:
        """The loaded runtime for a request: 404 unknown or not served, 503 failed its checks.

        Inside ``lease_scope`` the runtime is held until the scope ends, so a newer version
        swapped in meanwhile does not close it under the request.
        """
        held = held_runtimes()
        for _ in range(100):  # a retired runtime is already out of the current state: 1 retry
            entry = self.entry(name, version)
            runtime = entry.runtime
            if runtime is None:
                if entry.state is ModelState.UNLOADED:
                    served = [str(v.version) for v in self.versions(name) if v.runtime]
                    raise ModelNotFound(
                        f"model {name!r} version {entry.version} is not served "
                        f"(served: {', '.join(served) or 'none'}"
                        f"{'; ' + entry.reason if entry.reason else ''})"
                    )
                raise ModelNotReady(
                    f"model {name!r} version {entry.version} is unavailable: {entry.reason}"
                )
            if held is None:
                return runtime
            if runtime.acquire():
                held.append(runtime)
                return runtime
            # Retired between the lookup and the acquire: the new state is already in place.
        raise ModelNotReady(f"model {name!r} is being swapped; try again")

    def served(self) -> list[ModelVersion]:
        """The version each model serves to unversioned URLs (ready or not)."""
        return [m.versions[m.served] for m in self._models.values() if m.served is not None]

    @property
    def ready(self) -> bool:
        """Loading has finished and at least one model is ready."""
        return self.loaded and any(e.state is ModelState.READY for e in self.served())

    def policy(self, name: str) -> VersionPolicy:
        return self._model(name).policy

    def index(self) -> list[dict[str, Any]]:
        """Every version on disk with its state and reason (the Triton repository index)."""
        rows = []
        for name, model in sorted(self._models.items()):
            for number, entry in sorted(model.versions.items()):
                reason = entry.reason
                if not reason and model.policy_error:
                    reason = f"{model.policy_error} (using {model.policy})"
                if self._root_problem:
                    reason = "; ".join(
                        r for r in (reason, self._root_problem + ", serving what was loaded") if r
                    )
                rows.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": entry.state.value,
                        "reason": reason,
                    }
                )
        return rows
