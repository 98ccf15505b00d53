"""Where a benchmark's server and load generator run: anywhere (``shared``: they and whatever else
runs share every core), or ``pinned``: the server on one core and the load generator on another,
by ``taskset``, the same for every server measured. A child inherits its parent's CPU set, so every
process a server forks (uvicorn workers, tritonserver and its backend stubs) and every thread they
start (onnxruntime's pools) stays on the server's core; :func:`group_affinity` checks that it did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

PROC = Path("/proc")


class Affinity(TypedDict):
    """What a process group was allowed to run on: its processes, their threads, the distinct
    CPU lists (``Cpus_allowed_list``, e.g. ``"0"`` or ``"0-1"``) among them."""

    processes: int
    threads: int
    cpus: list[str]


@dataclass(frozen=True)
class Placement:
    """One way of placing the two sides: ``server_cpus``/``client_cpus`` as taskset takes them
    (``"0"``), or None for anywhere."""

    mode: str
    server_cpus: str | None
    client_cpus: str | None

    @property
    def pinned(self) -> bool:
        return self.server_cpus is not None

    def server(self, argv: list[str]) -> list[str]:
        """``argv`` started on the server's CPUs."""
        return taskset(self.server_cpus, argv)

    def client(self, argv: list[str]) -> list[str]:
        """``argv`` started on the load generator's CPUs."""
        return taskset(self.client_cpus, argv)


SHARED = Placement("shared", None, None)


def taskset(cpus: str | None, argv: list[str]) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (which execs it: the pid stays the command's)."""
    return argv if cpus is None else ["taskset", "-c", cpus, *argv]


def pinned(server_cpu: int | None = None, client_cpu: int | None = None) -> Placement:
    """The server on one core, the load generator on another: by default the first two cores this
    process may use."""
    cores = sorted(os.sched_getaffinity(0))
    server = cores[0] if server_cpu is None else server_cpu
    others = [c for c in cores if c != server]
    client = (others[0] if others else None) if client_cpu is None else client_cpu
    if client is None or client == server:
        raise SystemExit(f"pinning needs two distinct cores; this process may use {cores}")
    return Placement("pinned", str(server), str(client))


def placements(modes: list[str], server_cpu: int | None, client_cpu: int | None) -> list[Placement]:
    """The placements named in ``modes`` ("shared", "pinned"), in that order."""
    known = {"shared": lambda: SHARED, "pinned": lambda: pinned(server_cpu, client_cpu)}
    unknown = [m for m in modes if m not in known]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {sorted(known)}")
    return [known[m]() for m in modes]


def _pgid(pid_dir: Path) -> int:
    # /proc/PID/stat: "PID (comm) STATE PPID PGRP ..."; comm may hold spaces and parentheses
    fields = (pid_dir / "stat").read_text().rpartition(")")[2].split()
    return int(fields[2])


def group_dirs(pgid: int) -> list[Path]:
    """The ``/proc/<pid>`` folders of the process group ``pgid``'s processes."""
    found = []
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if _pgid(pid_dir) == pgid:
                found.append(pid_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
    return found


def group_affinity(pgid: int) -> Affinity:
    """Every process of the process group ``pgid`` and every thread of each, with the CPU lists
    they may run on (``Cpus_allowed_list``): what a pinned figure really ran on."""
    processes, threads, cpus = 0, 0, set()
    for pid_dir in group_dirs(pgid):
        try:
            tasks = list((pid_dir / "task").iterdir())
            for task in tasks:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        cpus.add(line.split(":", 1)[1].strip())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        processes += 1
        threads += len(tasks)
    return Affinity(processes=processes, threads=threads, cpus=sorted(cpus))
