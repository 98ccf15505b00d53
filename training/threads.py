"""The CPU step's thread count, chosen as the machine's load changes: every core, or one.

Two OpenMP threads meet at a barrier after every parallel region, so when another process keeps
one of two cores busy, each region waits for the thread the scheduler set aside: measured here
(docs/benchmarks.md, issue 28), the lecture recipe's bf16 step fell from about 3,000-4,000
images/s to 500-1,000, while one thread kept about 3,000. A few steps at each count, every
``period`` steps, pick the faster for the steps until the next look. Each count is judged by
the median of its timed steps, not their sum: one step that the scheduler held up (a few
milliseconds among 7 ms steps) would otherwise send a quiet machine to one thread until the next
look.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

PERIOD = 300  # steps between two looks (about 2-3 s of the lecture recipe)
PROBE = 8  # steps timed at each count per look; the first of them, after a switch, is not timed


class ThreadChooser:
    """Runs ``probe`` steps with ``most`` threads, then ``probe`` with one, then the rest of each
    ``period`` with whichever took less time. Call ``before_step`` and ``after_step`` around
    each step; ``restore`` gives the process all its threads back (for evaluation)."""

    def __init__(
        self,
        most: int,
        period: int = PERIOD,
        probe: int = PROBE,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if period < 2 * probe + 1 or probe < 2:
            raise ValueError(f"a period of {period} steps has no room for two {probe}-step looks")
        self.counts = (most, 1)
        self.period, self.probe = period, probe
        self.chosen = most
        self.steps = 0
        self.clock = clock
        self._timed: tuple[list[float], list[float]] = ([], [])
        self._started = 0.0

    def before_step(self) -> None:
        phase = self.steps % self.period
        if phase == 2 * self.probe:
            most_s, one_s = (statistics.median(times) for times in self._timed)
            self.chosen = self.counts[0] if most_s <= one_s else self.counts[1]
            self._timed = ([], [])
        wanted = self.counts[phase // self.probe] if phase < 2 * self.probe else self.chosen
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        self._started = self.clock()

    def after_step(self) -> None:
        phase = self.steps % self.period
        if phase < 2 * self.probe and phase % self.probe:  # a look's step, not its first
            self._timed[phase // self.probe].append(self.clock() - self._started)
        self.steps += 1

    def restore(self) -> None:
        torch.set_num_threads(self.counts[0])


def thread_chooser(threads: int, device: torch.device, distributed: bool) -> ThreadChooser | None:
    """A chooser for a lone CPU run left to use every core it was given (``--threads 0``); an
    explicit count, a GPU or a distributed run keeps its threads as set."""
    most = torch.get_num_threads()
    if threads != 0 or device.type != "cpu" or distributed or most < 2:
        return None
    return ThreadChooser(most)
