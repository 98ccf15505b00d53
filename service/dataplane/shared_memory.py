"""Triton's system shared memory extension: regions that local clients register by the key of a
POSIX shared-memory object, and the bounded copies between them and a request's tensors.

Every copy is ``os.preadv`` / ``os.pwrite`` on the descriptor kept open since registration, never
an mmap: a client that truncates its object after registering cannot kill the server with SIGBUS.
A read that comes up short is a 400; before each write the object's size is checked (fstat) so the
server never writes past its end. A client that truncates between that check and the write gets
its object grown back by the write: its own doing, and still no byte read beyond the object.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.core.errors import InvalidInput, PayloadTooLarge, RegionNotFound, shown
from service.dataplane.types import InferRequest, RequestedOutput, SharedMemoryRef
from service.engine.dtypes import NUMPY_DTYPES
from service.engine.tensor_bytes import tensor_from_bytes, tensor_to_bytes
from service.engine.work_pool import WorkPool

SHM_DIR = "/dev/shm"  # where glibc's shm_open keeps every POSIX shared-memory object
# A plain object name, with the one leading slash shm_open takes: no other slash, no "..", no
# hidden name, nothing a shell or a log would misread.
KEY = re.compile(r"/?([A-Za-z0-9_][A-Za-z0-9._-]{0,254})")
MAX_NAME_CHARS = 256
PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int  # into the object, where the region starts
    byte_size: int


def _count(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where}: {what} must be a non-negative integer, not {value!r}")
    return value


def shared_memory_ref(parameters: Mapping[str, Any], where: str) -> SharedMemoryRef | None:
    """A tensor's shared-memory parameters (wire values, read by either codec); None when it
    names no region. The region and its byte size go together, as Triton requires."""
    region = parameters.get("shared_memory_region")
    size = parameters.get("shared_memory_byte_size")
    if region is None and size is None:
        if "shared_memory_offset" in parameters:
            raise InvalidInput(f"{where}: shared_memory_offset without shared_memory_region")
        return None
    if region is None or size is None:
        raise InvalidInput(
            f"{where}: shared_memory_region and shared_memory_byte_size must be given together"
        )
    if not isinstance(region, str) or not region or len(region) > MAX_NAME_CHARS:
        raise InvalidInput(f"{where}: shared_memory_region must be a region's name")
    offset = parameters.get("shared_memory_offset", 0)
    return SharedMemoryRef(
        region,
        _count(size, "shared_memory_byte_size", where),
        _count(offset, "shared_memory_offset", where),
    )


def _open_object(key: str) -> int:
    """A read-write descriptor of the shared-memory object ``key`` names, checked to be a plain
    file in ``SHM_DIR`` (no symbolic link followed, as glibc's shm_open does)."""
    match = KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise InvalidInput(
            f"key {str(key)[:80]!r} is not a shared-memory object name: '/name' with letters, "
            "digits, '.', '_' or '-' (no other '/', no '..')"
        )
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(os.path.join(SHM_DIR, match.group(1)), flags)
    except OSError as exc:
        raise InvalidInput(f"cannot open shared memory object {key!r}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"shared memory object {key!r} is not a plain shared-memory file")
    return fd


class _Region:
    """A registered region and its descriptor; closed once unregistered and no copy uses it, so
    a descriptor number is never reused under a copy in flight. No descriptor (-1): a worker
    process could not open the object another one registered (``unopened``: why)."""

    def __init__(self, status: RegionStatus, fd: int, unopened: str = "") -> None:
        self.status = status
        self.fd = fd
        self.unopened = unopened
        self.users = 0
        self.unregistered = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def position(self, ref: SharedMemoryRef, where: str) -> int:
        """Where ``ref`` starts in the object; its bytes must lie inside the region."""
        size = self.status.byte_size
        if ref.offset + ref.byte_size > size:
            raise InvalidInput(
                f"{where}: offset {ref.offset} + byte size {ref.byte_size} is beyond region "
                f"{ref.region!r} of {size} bytes"
            )
        return self.status.offset + ref.offset


class SharedMemoryRegistry:
    """The registered regions (at most ``max_regions``; 0 turns the extension off) and the copies
    between them and tensors; copies over ``inline_bytes`` run on the work pool, and a request
    reads at most ``max_read_bytes`` from regions (the bound a request body has)."""

    def __init__(self, max_regions: int, inline_bytes: int, max_read_bytes: int) -> None:
        self.max_regions = max_regions
        self.inline_bytes = inline_bytes
        self.max_read_bytes = max_read_bytes
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    # -- the extension's calls ----------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the object ``key`` as ``name``."""
        if self.max_regions <= 0:
            raise InvalidInput(
                "system shared memory is off here: SHARED_MEMORY_REGIONS=0, or WORKERS > 1 "
                "without WORKERS_DIR (each worker process would keep regions of its own)"
            )
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise InvalidInput(f"a region needs a name of 1 to {MAX_NAME_CHARS} characters")
        where = f"region {name!r}"
        _count(offset, "offset", where)
        if _count(byte_size, "byte_size", where) == 0:
            raise InvalidInput(f"{where}: byte_size must be at least 1")
        with self._lock:
            self._check_room(name)
            fd = _open_object(key)
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                os.close(fd)
                raise InvalidInput(
                    f"{where}: offset {offset} + byte_size {byte_size} is beyond the "
                    f"{size}-byte shared memory object {key!r}"
                )
            self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd)

    def register_unopened(self, name: str, key: str, offset: int, byte_size: int, why: str) -> None:
        """List a region another worker process registered but this one cannot open (its object
        is gone): the status stays the same in every worker, and a request naming it here is a
        400 that says ``why``."""
        with self._lock:
            self._check_room(name)
            status = RegionStatus(name, key, offset, byte_size)
            self._regions[name] = _Region(status, -1, why)

    def _check_room(self, name: str) -> None:
        if name in self._regions:
            raise InvalidInput(f"shared memory region {name!r} is already registered")
        if len(self._regions) >= self.max_regions:
            raise InvalidInput(
                f"{len(self._regions)} shared memory regions are registered, the limit here; "
                "unregister one first"
            )

    def unregister(self, name: str | None = None) -> None:
        """Forget ``name`` (None or "": every region); an unknown name is no error (Triton)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    region.unregistered = True
                    if region.users == 0:
                        region.close()

    def status(self, name: str | None = None) -> list[RegionStatus]:
        """Every region, or the one ``name`` names (404 when unknown, as Triton)."""
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"no system shared memory region {shown(name)} is registered")
        return [region.status]

    def close(self) -> None:
        self.unregister()

    @contextlib.contextmanager
    def _use(self, name: str, where: str) -> Iterator[_Region]:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InvalidInput(f"{where}: no shared memory region {name!r} is registered")
            if region.unopened:
                raise InvalidInput(
                    f"{where}: shared memory region {name!r} is registered, but this worker "
                    f"process cannot open its object: {region.unopened}"
                )
            region.users += 1
        try:
            yield region
        finally:
            with self._lock:
                region.users -= 1
                if region.unregistered and region.users == 0:
                    region.close()

    # -- copies ---------------------------------------------------------------------------------

    def read(
        self, ref: SharedMemoryRef, datatype: str, shape: Sequence[int], where: str
    ) -> np.ndarray:
        """The tensor of ``shape`` and ``datatype`` that ``ref`` holds (its byte size must be
        exactly what they need; BYTES: length-prefixed elements filling it), read into a new
        array."""
        dtype = NUMPY_DTYPES[datatype]
        if dtype.hasobject:
            raw = bytearray(ref.byte_size)
            self._read_into(ref, memoryview(raw), where)
            return tensor_from_bytes(bytes(raw), datatype, list(shape), where, "shared memory")
        expected = math.prod(shape) * dtype.itemsize
        if ref.byte_size != expected:
            raise InvalidInput(
                f"{where}: shared_memory_byte_size {ref.byte_size} but shape {list(shape)} of "
                f"{datatype} needs {expected}"
            )
        array = np.empty(shape, dtype)
        self._read_into(ref, array.reshape(-1).view(np.uint8).data, where)
        return array

    def _read_into(self, ref: SharedMemoryRef, view: memoryview, where: str) -> None:
        """Fill ``view`` from where ``ref`` points."""
        with self._use(ref.region, where) as region:
            position = region.position(ref, where)  # inside the region (its size is bounded)
            done = 0
            while done < len(view):
                got = os.preadv(region.fd, [view[done:]], position + done)
                if got == 0:
                    raise InvalidInput(
                        f"{where}: shared memory object {region.status.key!r} ends before the "
                        "region does (truncated since it was registered)"
                    )
                done += got

    def write(self, ref: SharedMemoryRef, array: np.ndarray, where: str) -> int:
        """Write ``array`` where ``ref`` points (its byte size at least the array's; BYTES as
        length-prefixed elements); the bytes written."""
        if array.dtype.hasobject:
            view = memoryview(tensor_to_bytes(array))
        else:
            view = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        nbytes = len(view)
        if nbytes > ref.byte_size:
            raise InvalidInput(
                f"{where}: shared_memory_byte_size {ref.byte_size} is too small for the "
                f"{nbytes}-byte output"
            )
        with self._use(ref.region, where) as region:
            position = region.position(ref, where)
            if position + nbytes > os.fstat(region.fd).st_size:
                raise InvalidInput(
                    f"{where}: shared memory object {region.status.key!r} ends before the "
                    "region does (truncated since it was registered)"
                )
            done = 0
            while done < nbytes:
                done += os.pwrite(region.fd, view[done:], position + done)
        return nbytes

    # -- a request's tensors ----------------------------------------------------------------------

    def check(self, ref: SharedMemoryRef, where: str) -> None:
        """``ref`` names a registered region and lies inside it (before any work is done)."""
        with self._use(ref.region, where) as region:
            region.position(ref, where)

    async def read_inputs(self, request: InferRequest, work: WorkPool) -> InferRequest:
        """``request`` with its shared-memory inputs read and its shared-memory outputs checked
        (unchanged, and no copy, when it uses no region)."""
        for output in request.outputs:
            if output.shared_memory is not None:
                self.check(output.shared_memory, f"output {output.name!r}")
        if all(t.shared_memory is None for t in request.inputs):
            return request
        total = sum(t.shared_memory.byte_size for t in request.inputs if t.shared_memory)
        if total > self.max_read_bytes:
            raise PayloadTooLarge(
                f"{total} bytes of inputs in shared memory, more than a request's limit of "
                f"{self.max_read_bytes} (MAX_REQUEST_BYTES)"
            )
        inputs = []
        for tensor in request.inputs:
            ref = tensor.shared_memory
            if ref is not None:
                light = ref.byte_size <= self.inline_bytes
                where = f"input {tensor.name!r}"
                data = await work.run_here_if_light(
                    light, self.read, ref, tensor.datatype, tensor.shape, where
                )
                tensor = replace(tensor, data=data)
            inputs.append(tensor)
        return replace(request, inputs=inputs)

    async def write_outputs(
        self, requested: Sequence[RequestedOutput], outputs: Mapping[str, Any], work: WorkPool
    ) -> dict[str, SharedMemoryRef]:
        """Write the outputs asked for in regions; what each was answered with (its true size)."""
        written: dict[str, SharedMemoryRef] = {}
        for output in requested:
            ref = output.shared_memory
            if ref is not None and output.name in outputs:
                array = outputs[output.name]
                light = array.nbytes <= self.inline_bytes
                where = f"output {output.name!r}"
                size = await work.run_here_if_light(light, self.write, ref, array, where)
                written[output.name] = replace(ref, byte_size=size)
        return written
