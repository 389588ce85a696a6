"""``Waiters``: a flow's waiting tasks, a list made on the first park and let go once all wake."""

from __future__ import annotations

import trio
import trio.testing

from stcp_framework.stack.flows import Waiters


async def test_unpark_all_wakes_every_waiter_and_lets_the_lot_go() -> None:
    waiters = Waiters()
    assert not waiters and waiters._tasks is None  # nothing made until someone parks
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
        assert not waiters and waiters._tasks is None
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
    assert waiters._tasks is None  # the last one out lets the list go


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    waiters = Waiters()
    woken: list[str] = []

    async def wait(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await waiters.park()
            woken.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "first", first)
        nursery.start_soon(wait, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert waiters and waiters._tasks is not None and len(waiters._tasks) == 1
        waiters.unpark_all()
    assert woken == ["second"]
    assert first.cancelled_caught and not second.cancelled_caught


async def test_a_waiter_woken_then_cancelled_keeps_its_wakeup() -> None:
    """Cancelled after ``unpark_all`` but before it runs, ``park`` returns normally (the
    cancellation comes at the task's next checkpoint), as with a ``ParkingLot``."""
    waiters = Waiters()
    returned = trio.Event()
    scope = trio.CancelScope()

    async def wait() -> None:
        with scope:
            await waiters.park()
            returned.set()
            await trio.lowlevel.checkpoint()  # the cancellation lands here

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        waiters.unpark_all()
        scope.cancel()
    assert returned.is_set() and scope.cancelled_caught
    assert not waiters
