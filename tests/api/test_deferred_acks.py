"""A pure ACK of sent data is not a round and a commit of its own (``Runtime._arrive``,
``Connection.drain_may_wait``): its delta -- SND.UNA, the send buffer's trim -- waits for
the flow's next round or, at the latest, its timer. Meanwhile the store holds the
acknowledged bytes (a restore would resend them; the peer drops them), and then it
lets them go."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing
from api_helpers import SERVER, served_pair

from stcp_framework import MemoryStore, Stream
from stcp_framework.link.sim import SimNetwork
from stcp_framework.stack.runtime import Runtime

PORT = 7
MESSAGE = b"m" * 300


async def _echo(stream: Stream) -> None:
    while data := await stream.receive_some(1 << 16):
        await stream.send_all(data)


async def _until(condition: Callable[[], bool], *, step: float) -> None:
    """Poll ``condition`` on the mock clock, for 5 s at most."""
    for _ in range(int(5 / step)):
        if condition():
            return
        await trio.sleep(step)
    raise AssertionError("not within 5 s")


async def _main() -> None:
    net = SimNetwork(1)
    store = MemoryStore()
    servers: list[Runtime] = []

    async def handler(stream: Stream) -> None:
        servers.append(stream._runtime)
        await _echo(stream)

    async with served_pair(net, store, handler, port=PORT, commit="auto") as client:
        stream = await client.connect(SERVER, PORT)
        got = bytearray()
        for i in range(1, 4):
            await stream.send_all(MESSAGE)
            while len(got) < i * len(MESSAGE):
                got += await stream.receive_some(1 << 16)
            await trio.sleep(0.5)  # the client's delayed ACK of the echo goes alone
        assert bytes(got) == MESSAGE * 3
        (runtime,) = set(servers)
        (flow_id,) = [f.flow_id for f in runtime.flows.values()]
        assert runtime.stats["drains_deferred"] >= 1

        # Right after a deferred ACK the store still holds the echoed bytes ...
        await stream.send_all(MESSAGE)
        while len(got) < 4 * len(MESSAGE):
            got += await stream.receive_some(1 << 16)
        deferred = runtime.stats["drains_deferred"]
        await _until(lambda: runtime.stats["drains_deferred"] > deferred, step=0.001)
        record = store.load_sync(flow_id)
        assert record is not None and record.tx  # acknowledged, not yet trimmed in the store
        # ... and lets them go by the flow's timer at the latest.
        await _until(lambda: not getattr(store.load_sync(flow_id), "tx", b""), step=0.01)
        record = store.load_sync(flow_id)
        assert record is not None and record.tcb["snd_una_offset"] == 4 * len(MESSAGE)
        await stream.aclose()


def test_a_pure_ack_waits_for_the_next_round_or_the_timer() -> None:
    trio.run(_main, clock=trio.testing.MockClock(autojump_threshold=0))
