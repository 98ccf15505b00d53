"""Worker processes that answer as one server (WORKERS > 1), through a folder they all read
(WORKERS_DIR, made by ``python -m service``), so no call depends on which worker takes it:

    control.json        {"generation": g, "unloaded": [names], "loaded": {name: g},
                        "overrides": {name: a load's config override}, "regions": {name: a
                        system shared memory region}}: the repository calls and the regions
                        registered (worker_regions.py), rewritten atomically under control.lock
                        by the worker taking a call
    acks/<pid>          {"generation": what that worker has applied, "unopened": {region: [g,
                        why]}}; the worker taking a call answers once every live worker's
                        generation is at least its own (or says who is late)
    statistics/<pid>    each worker's statistics snapshot, rewritten every STATISTICS_INTERVAL_S

A worker applies control.json before it starts serving (so a restarted one keeps an unload and
the regions), and then whenever the file changes (a ``stat`` every CONTROL_POLL_S on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from service.core.errors import InvalidInput, ModelNotFound, ServingError, WorkersPending
from service.core.processes import sibling
from service.dataplane.config_override import ConfigOverride, override_options
from service.dataplane.shared_memory import SharedMemoryRegistry
from service.dataplane.statistics import collect_statistics
from service.dataplane.worker_regions import Recorded, WorkerRegions
from service.engine.model_folder import NAME_PATTERN
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.statistics import VersionStatistics, statistics_from_dict, summed_statistics

log = logging.getLogger(__name__)

CONTROL_POLL_S = 0.05  # how often a worker looks for a changed control file
ACK_POLL_S = 0.02  # how often the worker taking a call looks at the others' acks
SYNC_TIMEOUT_S = 60.0  # longest a repository call waits for the other workers (a load may be slow)
STATISTICS_INTERVAL_S = 1.0  # the staleness of the other workers' statistics
Change = Literal["load", "unload"]


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class WorkerGroup:
    """This worker's part in the group sharing ``folder``."""

    def __init__(
        self,
        folder: Path,
        repository: ModelRepository,
        forget: Callable[[str], None] = lambda name: None,
        sync_timeout_s: float = SYNC_TIMEOUT_S,
        member: Callable[[int], bool] = sibling,
        regions: SharedMemoryRegistry | None = None,
    ) -> None:
        self.folder = folder
        self.repository = repository
        self.regions = WorkerRegions(regions) if regions is not None else None
        self.forget = forget  # what this worker keeps of a model's answers (the response cache)
        self.member = member  # whether a pid is a live worker of this group
        self.sync_timeout_s = sync_timeout_s
        self.pid = os.getpid()
        self.control = folder / "control.json"
        self.acks = folder / "acks"
        self.snapshots = folder / "statistics"
        self.applied = 0  # the control generation this worker has applied
        self._seen: tuple[int, int, int] | None = None  # control.json's (mtime, size, inode)
        self._lock: asyncio.Lock | None = None  # one apply at a time in this worker

    # -- lifecycle (start before serving; watch and publish run as tasks) ---------------------

    async def start(self) -> None:
        """Catch up with the calls the group took before this worker started, then say so."""
        self._lock = asyncio.Lock()
        for folder in (self.acks, self.snapshots):
            folder.mkdir(parents=True, exist_ok=True)
        for _ in self._others_acks():  # dead workers' acks go (a crash loop left one each)
            pass
        await self._catch_up()

    def start_state(self) -> tuple[set[str], dict[str, RuntimeOptions]]:
        """What the group's calls leave a starting worker's first load: the models unloaded and
        the config overrides of the loads in force, so it neither loads (nor keeps a copy of)
        what the others do not serve nor builds another runtime than theirs."""
        state = self._read()
        unloaded = set(state["unloaded"])
        overrides = {name: self._options(state, name) for name in state["loaded"]}
        return unloaded, {n: o for n, o in overrides.items() if o and n not in unloaded}

    async def watch(self) -> None:
        """Until cancelled: apply control.json whenever it changes."""
        while True:
            await asyncio.sleep(CONTROL_POLL_S)
            if self._signature() != self._seen:
                try:
                    await self._catch_up()
                except Exception:
                    log.exception("applying the workers' control file %s failed", self.control)

    async def publish_statistics(self) -> None:
        """Until cancelled: write this worker's statistics for the others to add."""
        while True:
            await asyncio.to_thread(self._write_statistics)
            await asyncio.sleep(STATISTICS_INTERVAL_S)

    def close(self) -> None:
        """This worker leaves: its ack and its statistics go with it."""
        for path in (self.acks / str(self.pid), self.snapshots / f"{self.pid}.json"):
            path.unlink(missing_ok=True)

    # -- repository calls -------------------------------------------------------------------

    async def change(
        self,
        change: Change,
        name: str,
        local: Callable[[], Awaitable[None]],
        override: ConfigOverride | None = None,
    ) -> None:
        """Record ``change`` of model ``name`` (a load with its config ``override``) for every
        worker, make it here with ``local`` (whose error, such as a load that fails, is the
        answer), then wait until every live worker has made it."""
        assert self._lock is not None, "start() first"
        await asyncio.to_thread(self._check, change, name)  # a 404 is recorded nowhere
        failed: ServingError | None = None
        async with self._lock:
            state = await asyncio.to_thread(self._record, change, name, override)
            generation = int(state["generation"])
            try:
                await asyncio.to_thread(self._apply, state, self.applied, name)
                await local()
            except ServingError as exc:
                failed = exc
            finally:
                self.applied = max(self.applied, generation)
                await asyncio.to_thread(self._acknowledge)
        await self._wait_for_others(generation)
        if failed is not None:
            raise failed

    async def _catch_up(self) -> None:
        assert self._lock is not None
        async with self._lock:
            self._seen = self._signature()  # before reading: a later write is seen next time
            state = await asyncio.to_thread(self._read)
            generation = int(state["generation"])
            if generation > self.applied or not (self.acks / str(self.pid)).exists():
                await asyncio.to_thread(self._apply, state, self.applied, None)
                self.applied = max(self.applied, generation)
                await asyncio.to_thread(self._acknowledge)

    async def _wait_for_others(self, generation: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sync_timeout_s
        while True:
            late = await asyncio.to_thread(self._late, generation)
            if not late:
                return
            if loop.time() >= deadline:
                raise WorkersPending(
                    f"applied by this worker, still pending in worker(s) "
                    f"{', '.join(map(str, late))} after {self.sync_timeout_s:g} s"
                )
            await asyncio.sleep(ACK_POLL_S)

    # -- system shared memory regions ----------------------------------------------------------

    async def register_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register a region here (Triton's 400 when its object cannot be opened: then nothing
        is recorded), record it, and answer once every worker holds it. If another worker could
        not open the object (removed in between), it is unregistered everywhere again and the
        answer is that 400: a register holds in every worker or in none."""
        generation = await self._region_call(
            lambda recorded, g: self._require_regions().add(
                recorded, g, name, key, offset, byte_size
            )
        )
        assert generation is not None
        failed = await asyncio.to_thread(self._unopened_elsewhere, name, generation)
        if failed:
            await self._region_call(
                lambda recorded, g: WorkerRegions.remove(recorded, name, generation)
            )
            pid, why = failed[0]
            raise InvalidInput(f"region {name!r} is not registered: worker {pid}: {why}")

    async def unregister_region(self, name: str | None) -> None:
        """Unregister ``name`` (None or "": every region) and answer once no worker holds it."""
        await self._region_call(lambda recorded, g: WorkerRegions.remove(recorded, name))

    async def _region_call(self, edit: Callable[[Recorded, int], bool]) -> int | None:
        """``edit`` the recorded regions (given the generation it makes) under the control
        file's lock, apply the result here and wait for the others; None if nothing changed."""
        assert self._lock is not None, "start() first"
        async with self._lock:
            state = await asyncio.to_thread(self._edit_regions, edit)
            if state is None:
                return None
            generation = int(state["generation"])
            await asyncio.to_thread(self._apply, state, self.applied, None)
            self.applied = max(self.applied, generation)
            await asyncio.to_thread(self._acknowledge)
        await self._wait_for_others(generation)
        return generation

    def _require_regions(self) -> WorkerRegions:
        assert self.regions is not None, "a worker group without shared memory"
        return self.regions

    def _edit_regions(self, edit: Callable[[Recorded, int], bool]) -> dict[str, Any] | None:
        with self._locked():
            state = self._read()
            self._require_regions().follow(state["regions"])  # as recorded before the check
            if not edit(state["regions"], int(state["generation"]) + 1):
                return None
            state["generation"] = int(state["generation"]) + 1
            write_atomically(self.control, json.dumps(state))
        return state

    def _unopened_elsewhere(self, name: str, generation: int) -> list[tuple[int, str]]:
        """(pid, why) of the live workers that could not open that registration of ``name``."""
        found = []
        for pid, ack in self._others_acks():
            unopened = ack.get("unopened", {}).get(name)
            if unopened is not None and int(unopened[0]) == generation:
                found.append((pid, str(unopened[1])))
        return found

    # -- files (blocking: called off the loop, bar ``_signature``) -----------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.control.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.control.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        empty = {"generation": 0, "unloaded": [], "loaded": {}, "overrides": {}, "regions": {}}
        return {**empty, **state}

    def _check(self, change: Change, name: str) -> None:
        """``ModelNotFound`` for a model this worker does not know (unload) or has no folder of
        (load), before anything is recorded."""
        if change == "unload":
            self.repository.versions(name)
        elif not NAME_PATTERN.match(name) or not (self.repository.root / name).is_dir():
            raise ModelNotFound(f"no model folder {name!r} in the repository")

    def _record(
        self, change: Change, name: str, override: ConfigOverride | None = None
    ) -> dict[str, Any]:
        with self._locked():
            state = self._read()
            state["generation"] = generation = int(state["generation"]) + 1
            unloaded = set(state["unloaded"])
            if change == "unload":
                unloaded.add(name)
            else:
                unloaded.discard(name)
                state["loaded"][name] = generation
                state["overrides"].pop(name, None)
                if override is not None:
                    state["overrides"][name] = asdict(override)
            state["unloaded"] = sorted(unloaded)
            write_atomically(self.control, json.dumps(state))
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / "control.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _apply(self, state: dict[str, Any], since: int, skip: str | None) -> None:
        """Make here what ``state`` holds beyond generation ``since`` (``skip``: the model the
        caller changes itself); the regions as recorded."""
        if self.regions is not None:
            self.regions.follow(state["regions"])
        unloaded = set(state["unloaded"])
        for name in sorted(unloaded - {skip}):
            with contextlib.suppress(ModelNotFound):  # not on this worker's disk (yet)
                self.repository.unload_model(name)
                self.forget(name)
        for name, generation in sorted(state["loaded"].items()):
            if generation > since and name != skip and name not in unloaded:
                self.forget(name)
                try:
                    self.repository.load_model(name, self._options(state, name))
                except ServingError as exc:  # the worker that took the call answered it
                    log.warning("loading %s for the other workers: %s", name, exc.message)
                self.forget(name)

    def _options(self, state: dict[str, Any], name: str) -> RuntimeOptions | None:
        """The runtime options of the config override the load recorded (None: none)."""
        recorded = state["overrides"].get(name)
        if recorded is None:
            return None
        fields = {**recorded, "preferred_batch_size": tuple(recorded["preferred_batch_size"])}
        override = ConfigOverride(**fields)
        return override_options(name, override, self.repository.options)

    def _acknowledge(self) -> None:
        unopened = self.regions.unopened if self.regions is not None else {}
        ack = {"generation": self.applied, "unopened": unopened}
        write_atomically(self.acks / str(self.pid), json.dumps(ack))

    def _others_acks(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(pid, ack) of every other live worker; dead workers' acks go."""
        for path in self.acks.iterdir():
            if not path.name.isdigit() or int(path.name) == self.pid:
                continue
            if not self.member(int(path.name)):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                ack = json.loads(path.read_text(encoding="utf-8"))
                yield int(path.name), {**ack, "generation": int(ack["generation"])}

    def _late(self, generation: int) -> list[int]:
        """The live workers that have not applied ``generation``."""
        return sorted(pid for pid, ack in self._others_acks() if ack["generation"] < generation)

    # -- statistics ---------------------------------------------------------------------------

    def _write_statistics(self) -> None:
        stats = collect_statistics(self.repository, None, None)
        text = json.dumps([asdict(s) for s in stats])
        write_atomically(self.snapshots / f"{self.pid}.json", text)

    def add_others(self, stats: list[VersionStatistics]) -> list[VersionStatistics]:
        """``stats`` (this worker's, live) plus every other live worker's last snapshot of the
        same versions; a dead worker's statistics go with it."""
        others: dict[tuple[str, str], list[VersionStatistics]] = {}
        for path in self.snapshots.glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else self.pid
            if pid == self.pid:
                continue
            if not self.member(pid):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                for row in json.loads(path.read_text(encoding="utf-8")):
                    found = statistics_from_dict(row)
                    others.setdefault((found.name, found.version), []).append(found)
        return [summed_statistics([s, *others.get((s.name, s.version), [])]) for s in stats]
