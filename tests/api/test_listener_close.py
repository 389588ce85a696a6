"""A listener closed with connections in its accept queue (RFC 9293 has no word on
it; Linux resets a closed listening socket's queue).

A stack that stops closes its listeners too, and a stop must end no connection (the
next process restores them): so the queued connections first wait the grace period
that restored ones wait for a listener (``unclaimed_grace``), then are reset. Over a
simulated network, on trio's fake clock.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, open_stack
from stcp_framework.link.sim import SimNetwork

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 7


@pytest.mark.parametrize("listen_again", [False, True])
async def test_a_closed_listener_s_queue_waits_for_the_grace_period_then_is_reset(
    listen_again: bool, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(1)
    store = MemoryStore()
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=store, rng=random.Random(3), unclaimed_grace=3.0
        ) as server,
    ):
        listener = server.listen(PORT, commit="manual")
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"hello")
        await trio.sleep(0.5)
        await listener.aclose()  # its one connection never accepted
        await trio.sleep(1)
        if listen_again:  # within the grace period: the new listener takes it
            listener = server.listen(PORT, commit="manual")
            served = await listener.accept()
            assert await served.receive_some() == b"hello"
            await trio.sleep(10)
            await served.send_all(b"still here")
            assert await stream.receive_some() == b"still here"
            return
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()  # a RST, once the grace period is over
        assert server.runtime.stats["unclaimed_reset"] == 1
        await trio.sleep(1)
        assert server.runtime.flows == {} and await store.list_flows() == []
