"""Worker processes: whether one still exists (for the files they leave behind) and how many
WORKERS=auto starts."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a killed worker counts until its parent reaps it, which
    uvicorn's supervisor does within a second)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True


def sibling(pid: int) -> bool:
    """Whether ``pid`` is alive and another child of this process's parent: a worker of the same
    server, not a stranger that took a dead worker's pid (Linux's /proc; elsewhere ``alive``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # pid (comm) state ppid ...: comm may hold spaces, so split after its last ")"
            parent = int(stat.read().rpartition(")")[2].split()[1])
    except FileNotFoundError:
        return False if os.path.isdir("/proc/self") else alive(pid)
    except (OSError, ValueError, IndexError):
        return alive(pid)
    return parent == os.getppid()


MEMORY_PER_MODEL_BYTE = 4  # a session holds its graph, weights prepacked, and arenas: ~4x the file
MEMORY_PER_WORKER = 200 * 2**20  # Python, onnxruntime, FastAPI and grpc in one process


def auto_workers(repository: Path, cores: int | None = None, memory: int | None = None) -> int:
    """WORKERS=auto: one worker per usable core (HTTP handling, not the model, bounds the small
    CIFAR models: docs/scaling.md#workers), as many as half the available memory holds, each
    loading every model's highest version."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    memory = available_memory() // 2 if memory is None else memory
    models = 0
    for model in repository.glob("*/*/model.onnx") if repository.is_dir() else ():
        if model.parent.name.isdigit() and model.parent == _highest(model.parent.parent):
            models += model.stat().st_size
    per_worker = MEMORY_PER_WORKER + MEMORY_PER_MODEL_BYTE * models
    return max(1, min(cores, 64, memory // per_worker))


def _highest(model_dir: Path) -> Path:
    versions = [d for d in model_dir.iterdir() if d.name.isdigit() and (d / "model.onnx").exists()]
    return max(versions, key=lambda d: int(d.name))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
