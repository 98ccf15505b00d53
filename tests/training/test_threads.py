"""The CPU step's thread count: every core, or one when that ran faster at the last look."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from training.threads import ThreadChooser, thread_chooser


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class StepClock:
    """A clock on which a step takes ``seconds[threads]``, whatever the machine does."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds, self.now = seconds, 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, chooser: ThreadChooser) -> int:
        chooser.before_step()
        threads = torch.get_num_threads()
        self.now += self.seconds[threads]
        chooser.after_step()
        return threads


def run(seconds: dict[int, float], steps: int) -> list[int]:
    clock = StepClock(seconds)
    chooser = ThreadChooser(2, period=10, probe=3, clock=clock)
    return [clock.step(chooser) for _ in range(steps)]


@pytest.mark.usefixtures("two_threads")
def test_a_loaded_machine_gets_one_thread_until_the_next_look() -> None:
    used = run({2: 0.030, 1: 0.009}, 20)
    # look: 3 steps with both threads, 3 with one; then the faster; then the next look
    assert used == [2, 2, 2, 1, 1, 1, 1, 1, 1, 1] * 2


@pytest.mark.usefixtures("two_threads")
def test_a_quiet_machine_keeps_every_core() -> None:
    assert run({2: 0.007, 1: 0.009}, 20) == [2, 2, 2, 1, 1, 1, 2, 2, 2, 2] * 2


class HeldUpClock(StepClock):
    """As ``StepClock``, but the second step is held up ``extra`` s while it runs (the scheduler
    gave its core to another process for a moment)."""

    def __init__(self, seconds: dict[int, float], extra: float) -> None:
        super().__init__(seconds)
        self.extra, self.steps = extra, 0

    def step(self, chooser: ThreadChooser) -> int:
        chooser.before_step()
        threads = torch.get_num_threads()
        self.steps += 1
        self.now += self.seconds[threads] + (self.extra if self.steps == 2 else 0.0)
        chooser.after_step()
        return threads


@pytest.mark.usefixtures("two_threads")
def test_one_held_up_step_does_not_send_a_quiet_machine_to_one_thread() -> None:
    """Three timed steps a count: by the sum, 37 + 7 + 7 ms against 3 x 9 ms would pick one
    thread; by the median it is 7 against 9 ms, and every core is kept."""
    clock = HeldUpClock({2: 0.007, 1: 0.009}, extra=0.030)
    chooser = ThreadChooser(2, period=12, probe=4, clock=clock)
    assert [clock.step(chooser) for _ in range(12)] == [2] * 4 + [1] * 4 + [2] * 4


@pytest.mark.usefixtures("two_threads")
def test_restore_gives_the_process_its_threads_back_for_evaluation() -> None:
    clock = StepClock({2: 0.030, 1: 0.009})
    chooser = ThreadChooser(2, period=10, probe=3, clock=clock)
    for _ in range(8):
        clock.step(chooser)
    assert torch.get_num_threads() == 1
    chooser.restore()
    assert torch.get_num_threads() == 2
    assert clock.step(chooser) == 1  # the next step goes back to the choice


@pytest.mark.usefixtures("two_threads")
def test_only_a_lone_cpu_run_left_to_every_core_is_chosen_for() -> None:
    cpu = torch.device("cpu")
    assert isinstance(thread_chooser(0, cpu, distributed=False), ThreadChooser)
    assert thread_chooser(2, cpu, distributed=False) is None  # --threads given: kept
    assert thread_chooser(0, cpu, distributed=True) is None
    assert thread_chooser(0, torch.device("cuda"), distributed=False) is None
    torch.set_num_threads(1)
    assert thread_chooser(0, cpu, distributed=False) is None
