"""Async durability: a crash that loses bytes the server acknowledged ends in a reset
the client sees, not in a connection that waits forever (``tcp/_arrive.acked_bytes_lost``).

The server's store lags 50 ms behind (``LaggingStore``), so in async mode its ACKs run
ahead of what the store holds, and a crash 10 ms after a burst loses bytes the client
has already let go. The client is the stack's own, which retransmits from its SND.UNA
and ignores ACKs older than it (RFC 9293), as Linux does; with a full window it probes
with <SEQ=SND.UNA-1> as Linux does (``tcp_xmit_probe_skb``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from sim_helpers import seed_trio_scheduler

from stcp_framework.api import Stack, Stream, open_stack
from stcp_framework.errors import ConnectionResetByPeer
from stcp_framework.link.sim import SimNetwork
from stcp_framework.store.base import FlowDelta
from stcp_framework.store.memory import MemoryStore
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.testing import CLIENT_ADDRESS, SERVER_ADDRESS, RestartableServer

PORT = 5001
LAG = 0.05
BUDGET = 600.0  # virtual seconds: without the reset the client waits until this fails


class LaggingStore(MemoryStore):
    """A ``MemoryStore`` whose commits take ``LAG`` (virtual) seconds to land."""

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        await trio.sleep(LAG)
        await super().commit(batch)


async def _sink(stack: Stack) -> None:
    async def handler(stream: Stream) -> None:
        while await stream.receive_some(1 << 16):
            pass

    await stack.serve(handler, PORT)


@asynccontextmanager
async def _connected(
    seed: int,
    app: Callable[[Stack], Awaitable[None]],
    store: MemoryStore,
    *,
    durability: str,
    config: TcpConfig | None = None,
) -> AsyncIterator[tuple[RestartableServer, Stream, trio.Nursery]]:
    """A restartable server running ``app`` and a client stream connected to it; the
    whole block within ``BUDGET`` virtual seconds."""
    seed_trio_scheduler(seed)
    network = SimNetwork(seed)
    server = RestartableServer(
        network, SERVER_ADDRESS, app, store=store, durability=durability, config=config
    )
    client_link = network.attach(CLIENT_ADDRESS)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with open_stack(client_link, [CLIENT_ADDRESS]) as client:
                stream = await client.connect(SERVER_ADDRESS, PORT)
                yield server, stream, nursery
                await stream.aclose()
            nursery.cancel_scope.cancel()
    await client_link.aclose()


async def _finish(stream: Stream) -> None:
    """Send 4 MiB more, half-close, and wait for the server's FIN."""
    await stream.send_all(b"y" * (4 << 20))
    await stream.send_eof()
    assert await stream.receive_some(10) == b""


@pytest.mark.parametrize("durability", ["async", "strict"])
async def test_a_crash_that_lost_acknowledged_bytes_resets_the_client(
    autojump_clock: trio.testing.MockClock, durability: str
) -> None:
    """async: the restored server resets the connection once the client's
    retransmission proves the loss; strict (the control): nothing acknowledged was
    lost, and the same steps end byte-exact."""
    store = LaggingStore()
    async with _connected(7, _sink, store, durability=durability) as (server, stream, _):
        await stream.send_all(b"x" * (1 << 20))
        await trio.sleep(4 * LAG)  # all of it acknowledged and stored
        await stream.send_all(b"x" * (1 << 20))
        await trio.sleep(LAG / 5)  # acknowledged, not yet in the store
        server.crash()
        started = trio.current_time()
        if durability == "async":
            with pytest.raises(trio.BrokenResourceError) as info:
                await _finish(stream)
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)
            # the proof is the client's retransmission timer, not a long wait
            assert trio.current_time() - started < 10.0
            assert server.stack.runtime.stats["reset_after_loss"] == 1
            (restart,) = server.restarts
            assert len(restart.restored) == 1  # the flow came back, behind
        else:
            await _finish(stream)


class FreezingStore(MemoryStore):
    """A ``MemoryStore`` whose commits hang once ``frozen`` is set (until the crash)."""

    frozen = False

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        if self.frozen:
            await trio.sleep_forever()
        await super().commit(batch)


RESTORED: list[Stream] = []


async def _reads_only_after_a_restart(stack: Stack) -> None:
    async def handler(stream: Stream) -> None:
        if not stream.recovered:
            await trio.sleep_forever()  # the window fills
        RESTORED.append(stream)
        while await stream.receive_some(1 << 16):
            pass

    await stack.serve(handler, PORT)


async def test_a_client_that_only_probes_a_window_lost_in_a_crash_is_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The server's window was full when it died, and its store had none of the bytes
    it acknowledged: the client has nothing to resend and only probes the window, at
    <SEQ=SND.UNA-1> above the restored RCV.NXT. The restored server answers a probe
    with an ACK of its SND.UNA (``_arrive.test_window_above_gap``); the client sends
    from there, and its retransmission proves the loss: a reset, not a wait for ever."""
    RESTORED.clear()
    store = FreezingStore()
    config = TcpConfig(recv_buffer_size=256 << 10)
    app = _reads_only_after_a_restart
    async with _connected(8, app, store, durability="async", config=config) as (
        server,
        stream,
        nursery,
    ):
        await trio.sleep(0.1)  # the handshake is stored
        store.frozen = True
        sender = trio.CancelScope()

        async def send() -> None:
            with sender:
                await stream.send_all(b"x" * (1 << 20))

        nursery.start_soon(send)
        await trio.sleep(5.0)  # window full: acknowledged, never stored; probes
        conn = stream._flow.conn
        assert conn.tcb.snd_wnd == 0 and conn.counters["zero_window_probe"] >= 2
        server.crash()
        store.frozen = False
        started = trio.current_time()
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some(10)
        assert isinstance(info.value.__cause__, ConnectionResetByPeer)
        assert trio.current_time() - started < 10.0
        assert server.stack.runtime.stats["reset_after_loss"] == 1
        (restored,) = RESTORED
        assert restored.tcp_info.counters["lost_ack_window_test"] >= 1
        sender.cancel()


async def _sends_again_after_a_restart(stack: Stack) -> None:
    """Sends 10,000 ``A`` bytes; restored, waits a moment, then sends 20,000 ``B`` bytes
    from where its record says it was (a restarted app's output need not repeat the
    lost one's)."""

    async def handler(stream: Stream) -> None:
        if not stream.recovered:
            await trio.sleep(0.2)
            await stream.send_all(b"A" * 10000)
        else:
            await trio.sleep(1.0)
            await stream.send_all(b"B" * 20000)
        await trio.sleep_forever()

    await stack.serve(handler, PORT)


async def test_bytes_sent_after_a_loss_the_peer_showed_never_splice_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The crash lost 10,000 bytes the client had received and acknowledged (async);
    the restored app sends other bytes from the same offset. The client's first ACK past
    the record shows the loss, and until the proof (the ACK again, ``LOST_ACK_PROOF``
    on) nothing may reach the client's RCV.NXT: it gets a reset, and never the restored
    sender's bytes after the lost ones (it got 10,000 A then 10,000 B: a review found
    it, twenty-second session)."""
    store = FreezingStore()
    async with _connected(1, _sends_again_after_a_restart, store, durability="async") as (
        server,
        stream,
        _,
    ):
        await trio.sleep(0.1)  # the handshake stored
        store.frozen = True
        got = bytearray()
        with pytest.raises(trio.BrokenResourceError) as info:
            with trio.move_on_after(0.5):
                while data := await stream.receive_some(65536):
                    got += data
            assert bytes(got) == b"A" * 10000
            server.crash()
            store.frozen = False
            while data := await stream.receive_some(65536):
                got += data
        assert isinstance(info.value.__cause__, ConnectionResetByPeer)
        assert bytes(got) == b"A" * 10000
        assert server.stack.runtime.stats["reset_after_loss"] == 1
