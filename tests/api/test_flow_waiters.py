"""``Waiters``: a flow's parking lot, made on the first park and let go once all wake."""

from __future__ import annotations

import trio
import trio.testing

from stcp_framework.stack.flows import Waiters


async def test_unpark_all_wakes_every_waiter_and_lets_the_lot_go() -> None:
    waiters = Waiters()
    assert not waiters and waiters._lot is None  # nothing made until someone parks
    woken: list[int] = []

    async def wait(i: int) -> None:
        await waiters.park()
        woken.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(wait, i)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters
        waiters.unpark_all()
        assert not waiters and waiters._lot is None
    assert sorted(woken) == [0, 1, 2]


async def test_a_task_that_parks_after_a_wakeup_waits_for_the_next_one() -> None:
    waiters = Waiters()
    waiters.unpark_all()  # nobody waits: a no-op
    parked = trio.Event()
    done = trio.Event()

    async def wait() -> None:
        parked.set()
        await waiters.park()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await parked.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert waiters and not done.is_set()
        waiters.unpark_all()
        await done.wait()


async def test_a_cancelled_waiter_leaves_no_one_waiting() -> None:
    waiters = Waiters()
    with trio.move_on_after(0.01):
        await waiters.park()
    assert not waiters
