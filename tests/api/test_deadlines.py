"""``Deadlines``: callbacks due at loop times on one shared timer, run when due, never when
dropped, in any order of adding; each loop its own."""

from __future__ import annotations

import asyncio

import uvloop

from service.api.rest.deadlines import Deadlines, for_running_loop


async def _wait_until_empty(deadlines: Deadlines) -> None:
    while len(deadlines):
        await asyncio.sleep(0.001)


def test_due_callbacks_run_in_time_order_and_dropped_ones_never() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[str] = []
        now = loop.time()
        deadlines.add(now + 0.03, lambda: ran.append("late"))
        deadlines.add(now + 0.01, lambda: ran.append("early"))  # earlier than the timer armed
        dropped = deadlines.add(now + 0.02, lambda: ran.append("dropped"))
        deadlines.drop(dropped)
        await _wait_until_empty(deadlines)
        assert loop.time() >= now + 0.03 - 0.002  # not run long before it was due
        return ran

    assert asyncio.run(scenario()) == ["early", "late"]


def test_a_callback_may_drop_another_due_at_the_same_time() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[str] = []
        when = loop.time() + 0.005
        keys: list[int] = []

        def first() -> None:
            ran.append("first")
            deadlines.drop(keys[1])

        keys.append(deadlines.add(when, first))
        keys.append(deadlines.add(when, lambda: ran.append("second")))
        await _wait_until_empty(deadlines)
        await asyncio.sleep(0.01)
        return ran

    assert asyncio.run(scenario()) == ["first"]


def test_a_deadline_added_after_the_timer_ran_dry_is_still_run() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        runs = 0

        def count() -> None:
            nonlocal runs
            runs += 1

        for _ in range(3):  # each time the set empties, then a new deadline arms a timer again
            deadlines.add(loop.time() + 0.002, count)
            await _wait_until_empty(deadlines)
        return runs

    assert asyncio.run(scenario()) == 3


def test_each_loop_has_its_own_deadlines_on_uvloop_too() -> None:
    async def owned() -> tuple[Deadlines, Deadlines, bool]:
        first, again = for_running_loop(), for_running_loop()
        ran = asyncio.Event()
        first.add(asyncio.get_running_loop().time(), ran.set)  # already due: runs at once
        await asyncio.wait_for(ran.wait(), 1)
        return first, again, ran.is_set()

    one, same, ran_one = asyncio.run(owned())
    other, _, ran_other = uvloop.run(owned())
    assert one is same and other is not one
    assert ran_one and ran_other
