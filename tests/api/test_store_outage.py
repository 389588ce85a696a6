"""G7: the store goes away mid-transfer and comes back.

While it is out the stack acknowledges and sends nothing that is not durable; the
segments it withheld meanwhile -- ACKs of what came in, data, the resends of its own
retransmission timeouts -- leave as soon as a commit lands again
(``Runtime._resend_withheld``), not at retransmission timers that backed off during
the outage on both sides (RFC 6298 (5.5): 0.2, 0.4, 0.8, ... s).
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from api_helpers import OutageStore

from stcp_framework import Stream, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.stack.runtime import STORE_RETRY_MAX

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 9
SIZE = 300_000
OUTAGE = 4.0  # the peer's RTO backoff puts its tries at 0.2, 0.6, 1.4, 3.0, 6.2 s


def pattern(n: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(n))


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_withheld_segments_leave_once_the_store_is_back(
    autojump_clock: trio.testing.MockClock, direction: str
) -> None:
    net = SimNetwork(5)
    store = OutageStore()
    data = pattern(SIZE)
    got = bytearray()
    times: dict[str, float] = {}
    first = trio.Event()
    done = trio.Event()

    async def take(stream: Stream) -> None:
        while len(got) < SIZE:
            chunk = await stream.receive_some(65536)
            assert chunk, "EOF before all bytes came"
            got.extend(chunk)
            first.set()
        times["done"] = trio.current_time()
        done.set()

    async def give(stream: Stream) -> None:
        await stream.send_all(data[:20_000])
        await first.wait()
        await stream.send_all(data[20_000:])

    async def handler(stream: Stream) -> None:
        await (take if direction == "upload" else give)(stream)
        await trio.sleep_forever()

    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(net.attach(SERVER), [SERVER], store=store, rng=random.Random(3)) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            lambda task_status: server.serve(handler, PORT, task_status=task_status)
        )
        stream = await client.connect(SERVER, PORT)
        nursery.start_soon(give if direction == "upload" else take, stream)
        with trio.fail_after(60):
            await first.wait()
            store.down = True
            await trio.sleep(OUTAGE)
            store.down = False
            times["up"] = trio.current_time()
            await done.wait()
        stats = server.runtime.stats
        nursery.cancel_scope.cancel()
    assert bytes(got) == data
    assert stats["store_unavailable"] >= 1 and stats["segments_withheld"] >= 1
    assert stats["withheld_flows_resent"] >= 1
    # resumed at the first commit after the store came back, not at the next
    # backed-off retransmission (3.2 s after the one at 3.0 s)
    assert times["done"] - times["up"] < STORE_RETRY_MAX + 0.3
