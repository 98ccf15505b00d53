"""The system shared memory regions the worker processes share (WORKERS > 1): the ``regions`` of
WORKERS_DIR/control.json, ``{name: {"key", "offset", "byte_size", "generation"}}``, and what one
worker makes of them in its own registry. A POSIX object is opened by its key, so every worker
opens the region itself; ``generation`` tells a region registered again under the same name (its
object perhaps made anew) from the one a worker already holds.
"""

from __future__ import annotations

from typing import Any

from service.core.errors import InvalidInput
from service.dataplane.shared_memory import SharedMemoryRegistry

Recorded = dict[str, dict[str, Any]]  # control.json's "regions"


class WorkerRegions:
    """This worker's registry kept equal to the recorded regions."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self.registry = registry
        self.held: dict[str, int] = {}  # name -> generation of the registration held here
        # name -> (generation, why): recorded regions whose object this worker could not open
        self.unopened: dict[str, tuple[int, str]] = {}

    def follow(self, recorded: Recorded) -> None:
        """Make the registry hold exactly ``recorded``, in registration order (so every worker
        lists them alike). A region whose object cannot be opened here (removed since another
        worker registered it) is listed all the same, and a request naming it here is a 400."""
        for name, generation in list(self.held.items()):
            entry = recorded.get(name)
            if entry is None or entry["generation"] != generation:
                self.registry.unregister(name)
                del self.held[name]
                self.unopened.pop(name, None)
        for name, entry in sorted(recorded.items(), key=lambda item: item[1]["generation"]):
            if name in self.held:
                continue
            key, offset, size = entry["key"], entry["offset"], entry["byte_size"]
            try:
                self.registry.register(name, key, offset, size)
            except InvalidInput as exc:
                self.registry.register_unopened(name, key, offset, size, exc.message)
                self.unopened[name] = (entry["generation"], exc.message)
            self.held[name] = entry["generation"]

    def add(
        self, recorded: Recorded, generation: int, name: str, key: str, offset: int, size: int
    ) -> bool:
        """Register here first, with every check of a lone server (a key that cannot be opened,
        the bounds, a name taken, the region count; the caller has made the registry hold what
        is recorded, ``follow``), and only then record it; an error leaves ``recorded`` as it
        was."""
        self.registry.register(name, key, offset, size)
        recorded[name] = {"key": key, "offset": offset, "byte_size": size, "generation": generation}
        self.held[name] = generation
        return True

    @staticmethod
    def remove(recorded: Recorded, name: str | None, generation: int | None = None) -> bool:
        """Take ``name`` (None or "": every region; ``generation``: only that registration of it)
        out of ``recorded``; whether anything was there (an unknown name is no error, Triton)."""
        names = [name] if name else list(recorded)
        found = False
        for each in names:
            entry = recorded.get(each)
            if entry is not None and generation in (None, entry["generation"]):
                del recorded[each]
                found = True
        return found
