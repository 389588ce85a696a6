"""Level 2 (G4): commit with state, replay after a crash, atomic send + commit."""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from api_helpers import OutageStore, served_pair, server_life

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork, TapEvent, TapVerdict
from stcp_framework.services import discard, echo
from stcp_framework.store.base import FlowRecord, StoreUnavailable
from stcp_framework.tcp.state import TcpState

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 7


def server_incarnation(
    net: SimNetwork,
    store: MemoryStore,
    handler: Callable[[Stream], Awaitable[object]],
    seed: int,
    instance: str = "srv",
) -> AbstractAsyncContextManager[Stack]:
    """One life of the server: crash it by leaving the block (only the store survives)."""
    return server_life(
        net, store, handler, seed=seed, port=PORT, commit="manual", instance=instance,
        iss_secret=b"server",
    )  # fmt: skip


async def test_replay_resumes_at_the_commit_offset_with_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1)
    store = MemoryStore()
    seen: list[tuple[bool, bytes | None, int, bytes]] = []
    first_read = trio.Event()
    replayed = trio.Event()

    async def handler(stream: Stream) -> None:
        data = await stream.receive_some(5)
        seen.append((stream.recovered, stream.state, stream.commit_offset, data))
        if stream.recovered:
            replayed.set()
        else:
            await stream.commit(2, state=b"after-2")  # processed "ab" only
            await stream.receive_some(100)  # read more, never committed
            first_read.set()
        await trio.sleep_forever()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, handler, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"abcdefgh")
            await first_read.wait()
        # crashed; a new incarnation restores the flow from the store
        async with server_incarnation(net, store, handler, seed=4):
            with trio.fail_after(5):
                await replayed.wait()
    assert seen[0] == (False, None, 0, b"abcde")
    # replay: from the commit offset, with the state stored by that commit
    assert seen[1] == (True, b"after-2", 2, b"cdefg")


async def test_commit_nowait_lands_with_the_next_group_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``commit_nowait`` returns before the store has the commit; the next round stores
    it. One that never landed is lost in a crash: reading resumes at the one before."""
    net = SimNetwork(1)
    store = OutageStore()
    seen: list[tuple[bool, bytes | None, int, bytes]] = []
    stored: list[tuple[int, bytes | None]] = []
    committed = trio.Event()
    replayed = trio.Event()

    async def stored_commit() -> tuple[int, bytes | None]:
        (flow_id,) = await store.list_flows()
        record = await store.load(flow_id)
        assert record is not None
        return record.commit_offset, record.app_state

    async def handler(stream: Stream) -> None:
        data = await stream.receive_some(5)
        seen.append((stream.recovered, stream.state, stream.commit_offset, data))
        if stream.recovered:
            replayed.set()
        else:
            stream.commit_nowait(3, state=b"after-3")
            stored.append(await stored_commit())  # not yet: no round has run
            await trio.sleep(0.1)
            stored.append(await stored_commit())  # the next round stored it
            await stream.receive_some(2)
            store.down = True
            stream.commit_nowait(7, state=b"after-7")
            await trio.sleep(0.1)  # its round fails; the stack holds the delta
            committed.set()
        await trio.sleep_forever()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, handler, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"abcdefgh")
            with trio.fail_after(5):
                await committed.wait()
        store.down = False  # crashed with the commit at 7 unstored
        async with server_incarnation(net, store, handler, seed=4):
            with trio.fail_after(5):
                await replayed.wait()
    assert stored == [(0, None), (3, b"after-3")]
    assert seen[1] == (True, b"after-3", 3, b"defgh")


async def test_send_and_commit_without_waiting_is_still_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``send_all_and_commit(wait_durable=False)`` returns before the store has the
    answer and the commit; the answer leaves only once they are stored; a crash before
    that loses both, and the input is replayed and answered once."""
    net = SimNetwork(1)
    store = OutageStore()
    answers: list[tuple[bool, bytes]] = []
    answered = trio.Event()

    async def handler(stream: Stream) -> None:
        data = await stream.receive_some(100)
        answers.append((stream.recovered, data))
        store.down = not stream.recovered  # the first incarnation's write never lands
        await stream.send_all_and_commit(data.upper(), wait_durable=False)
        answered.set()
        await trio.sleep_forever()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, handler, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"abc")
            with trio.fail_after(5):
                await answered.wait()
            with trio.move_on_after(1):  # nothing leaves while the store refuses it
                assert await stream.receive_some(100) == b"never"
        answered = trio.Event()
        store.down = False
        async with server_incarnation(net, store, handler, seed=4):
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b"ABC"
    assert answers == [(False, b"abc"), (True, b"abc")]


async def test_send_all_without_waiting_returns_before_the_bytes_are_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1)
    store = OutageStore()
    returned = trio.Event()

    async def handler(stream: Stream) -> None:
        store.down = True
        await stream.send_all(b"hello", wait_durable=False)
        returned.set()
        await trio.sleep(1)
        store.down = False  # the stack retries the held delta; then the bytes leave
        await trio.sleep_forever()

    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        server_incarnation(net, store, handler, seed=3),
    ):
        stream = await client.connect(SERVER, PORT)
        with trio.fail_after(5):
            await returned.wait()
        received = b""
        with trio.fail_after(10):
            while len(received) < 5:
                received += await stream.receive_some(100)
        (flow_id,) = await store.list_flows()
        record = await store.load(flow_id)
        assert record is not None and record.tx_offset + len(record.tx) >= 5
    assert received == b"hello"


@pytest.mark.parametrize("nowait", [False, True], ids=["commit", "commit_nowait"])
async def test_commit_outside_read_range_or_after_close_is_refused(
    autojump_clock: trio.testing.MockClock, nowait: bool
) -> None:
    net = SimNetwork(1)
    errors: list[BaseException] = []
    done = trio.Event()

    async def commit(stream: Stream, offset: int) -> None:
        if nowait:
            stream.commit_nowait(offset)
        else:
            await stream.commit(offset)

    async def handler(stream: Stream) -> None:
        await stream.receive_some(3)
        for bad in (4, -1):
            try:
                await commit(stream, bad)
            except ValueError as exc:
                errors.append(exc)
        await stream.aclose()
        try:
            await commit(stream, 3)
        except trio.ClosedResourceError as exc:
            errors.append(exc)
        done.set()

    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        server_incarnation(net, MemoryStore(), handler, seed=3),
    ):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"abc")
        await done.wait()
    assert [type(e) for e in errors] == [ValueError, ValueError, trio.ClosedResourceError]


async def test_uncommitted_bytes_hold_the_window(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """G6: with level 2, read-but-uncommitted bytes keep occupying the receive window,
    and the reader that waits for more is told why, once."""
    from stcp_framework import TcpConfig

    net = SimNetwork(1)
    config = TcpConfig(recv_buffer_size=64 * 1024, send_buffer_size=1 << 20)
    read = 0
    reading_done = trio.Event()

    async def handler(stream: Stream) -> None:
        nonlocal read
        with trio.move_on_after(5):
            while True:
                read += len(await stream.receive_some())
        reading_done.set()
        await trio.sleep_forever()

    async with served_pair(
        net, MemoryStore(), handler, port=PORT, commit="manual", config=config
    ) as client:
        stream = await client.connect(SERVER, PORT)
        with trio.move_on_after(5):
            await stream.send_all(b"x" * 500_000)
        await reading_done.wait()
    assert 0 < read <= 64 * 1024
    stalls = [rec.getMessage() for rec in caplog.records if "stalls" in rec.getMessage()]
    assert len(stalls) == 1
    assert f"{read} bytes read and not committed fill the 65536-byte receive buffer" in (stalls[0])


async def test_discard_commits_within_a_small_receive_buffer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """discard commits every MiB, or every half buffer when that is less: with a 16 KB
    buffer it used to wait for a MiB that the shut window never let in."""
    from stcp_framework import TcpConfig

    net = SimNetwork(1)
    config = TcpConfig(recv_buffer_size=16 * 1024, send_buffer_size=16 * 1024)
    payload = random.Random(4).randbytes(300_000)
    reports: list[str] = []

    async def handler(stream: Stream) -> None:
        await discard(stream, report=reports.append)

    async with served_pair(
        net, MemoryStore(), handler, port=PORT, commit="manual", config=config
    ) as client:
        stream = await client.connect(SERVER, PORT)
        with trio.fail_after(30):
            await stream.send_all(payload)
            await stream.send_eof()
            assert await stream.receive_some() == b""
    assert reports == [f"discard: received 300000 bytes, crc32 {zlib.crc32(payload):08x}"]


@pytest.mark.parametrize("crash_after", [1, 3, 7])
async def test_echo_is_exactly_once_across_crashes(
    autojump_clock: trio.testing.MockClock, crash_after: int
) -> None:
    """send_all_and_commit: every input is answered once, whatever the crash point."""
    net = SimNetwork(5, delay=0.002)
    store = MemoryStore()
    payload = random.Random(crash_after).randbytes(300_000)
    received = bytearray()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        crashes = 0
        async with trio.open_nursery() as nursery:
            stream: Stream | None = None

            async def run_client() -> None:
                nonlocal stream
                stream = await client.connect(SERVER, PORT)
                for i in range(0, len(payload), 10_000):
                    await stream.send_all(payload[i : i + 10_000])
                    await trio.sleep(0.01)
                await stream.send_eof()
                while data := await stream.receive_some():
                    received.extend(data)

            client_done = trio.Event()

            async def client_task() -> None:
                await run_client()
                client_done.set()

            server_cm = server_incarnation(net, store, echo, seed=10)
            await server_cm.__aenter__()
            nursery.start_soon(client_task)
            while crashes < crash_after and not client_done.is_set():
                await trio.sleep(0.05 + 0.01 * crashes)
                await server_cm.__aexit__(None, None, None)  # crash
                crashes += 1
                server_cm = server_incarnation(net, store, echo, seed=10 + crashes)
                await server_cm.__aenter__()
            with trio.fail_after(60):
                await client_done.wait()
            await server_cm.__aexit__(None, None, None)
    assert bytes(received) == payload


BACKEND = "198.18.0.3"


@asynccontextmanager
async def client_incarnation(
    net: SimNetwork, store: MemoryStore, seed: int, **options: Any
) -> AsyncIterator[Stack]:
    """One life of a stack that connects out (a relay's upstream side)."""
    link = net.attach(SERVER)
    try:
        async with open_stack(
            link, [SERVER], store=store, instance="relay", rng=random.Random(seed), **options
        ) as stack:
            yield stack  # leaving the block is the crash: only the store survives
    finally:
        await link.aclose()


async def test_reattach_gives_back_a_restored_outbound_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No listener takes a restored outbound flow: ``Stack.reattach(flow_id)`` does,
    once; the connection went on meanwhile and carries data again at once."""
    net = SimNetwork(3)
    store = MemoryStore()
    async with (
        open_stack(net.attach(BACKEND), [BACKEND], rng=random.Random(1)) as upstream,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(upstream.serve, echo, 7)
        async with client_incarnation(net, store, 10) as stack:
            stream = await stack.connect(BACKEND, 7, commit="manual")
            await stream.send_all(b"hello")
            assert await stream.receive_some() == b"hello"
            await stream.commit()  # else the restored stream replays it first (G4)
            flow_id = stream.flow_id
        async with client_incarnation(net, store, 11) as stack:
            with pytest.raises(LookupError, match="no restored connection"):
                stack.reattach("198.18.0.2:1-198.18.0.3:7/00000000")
            again = stack.reattach(flow_id)
            assert again.recovered and again.flow_id == flow_id
            with pytest.raises(LookupError, match="taken already"):
                stack.reattach(flow_id)
            with trio.fail_after(5):
                await again.send_all(b"again")
                assert await again.receive_some() == b"again"
        nursery.cancel_scope.cancel()


async def test_a_stream_restored_in_time_wait_replays_what_was_not_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both FINs went through, but the app neither committed nor closed: the restored
    stream is handed to the handler again and replays the bytes (G4). (It was left
    out, with the bytes, as if the app had closed it.)"""
    net = SimNetwork(2)
    store = MemoryStore()
    in_time_wait = trio.Event()
    replayed: list[bytes] = []
    replay_done = trio.Event()

    async def first_life(stream: Stream) -> None:
        await stream.send_eof()
        while await stream.receive_some():
            pass  # read, never committed
        for _ in range(500):  # the peer's FIN comes after our FIN's ACK
            if stream.tcp_state is TcpState.TIME_WAIT:
                in_time_wait.set()
                break
            await trio.sleep(0.01)
        await trio.sleep_forever()

    async def second_life(stream: Stream) -> None:
        assert stream.recovered
        data = bytearray()
        while chunk := await stream.receive_some():
            data += chunk
        replayed.append(bytes(data))
        await stream.commit()
        replay_done.set()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, first_life, seed=10):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"request")
            assert await stream.receive_some() == b""  # the server's FIN comes first
            await stream.aclose()
            with trio.fail_after(5):
                await in_time_wait.wait()
        async with server_incarnation(net, store, second_life, seed=11):
            with trio.fail_after(5):
                await replay_done.wait()
    assert replayed == [b"request"]


@asynccontextmanager
async def backend_keeping_streams(
    net: SimNetwork,
) -> AsyncIterator[tuple[Stack, list[Stream], trio.Nursery]]:
    """A server at ``BACKEND`` on port 7 whose handler keeps each stream open: yields
    it, the streams it accepted, and a nursery cancelled at the end."""
    accepted: list[Stream] = []

    async def keep(stream: Stream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with (
        open_stack(net.attach(BACKEND), [BACKEND], rng=random.Random(1)) as upstream,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(upstream.serve, keep, 7)
        yield upstream, accepted, nursery
        nursery.cancel_scope.cancel()


async def test_a_restored_stream_nobody_takes_is_reset_after_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An outbound stream the restarted app never reattaches (it crashed before noting
    the flow id, say) would hold its peer and its store record for ever."""
    net = SimNetwork(3)
    store = MemoryStore()
    async with backend_keeping_streams(net) as (_, accepted, _nursery):
        async with client_incarnation(net, store, 10) as stack:
            flow_id = (await stack.connect(BACKEND, 7, commit="manual")).flow_id
        async with client_incarnation(net, store, 11, unclaimed_grace=3.0) as stack:
            await trio.sleep(2.0)
            assert stack.runtime.stats["unclaimed_reset"] == 0
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
                await accepted[0].receive_some()  # the reset reaches the peer
            assert stack.runtime.stats["unclaimed_reset"] == 1
            with pytest.raises(LookupError):
                stack.reattach(flow_id)  # too late


class Collector:
    """A level-2 handler that commits what it reads, and remembers across server lives
    each stream's ``recovered`` and every byte."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.got: list[bytes] = []

    async def __call__(self, stream: Stream) -> None:
        self.calls.append(stream.recovered)
        while data := await stream.receive_some():
            self.got.append(data)
            await stream.commit()


async def connect_and_crash(
    net: SimNetwork, store: MemoryStore, handler: Collector, client: Stack
) -> Stream:
    """One server life: ``client`` connects and sends ``b"before"``, then the server
    crashes (only ``store`` survives); returns the client's stream."""
    async with server_incarnation(net, store, handler, seed=3):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"before")
        await trio.sleep(1.0)
    return stream


async def test_a_restored_stream_is_handed_to_the_app_once_though_data_came_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Segments can reach a restored flow before the restarted app listens (the kernel
    peer does not wait). The flow is still handed over once, when the listener comes:
    a second handler on the same stream would split its bytes between two readers."""
    net = SimNetwork(4)
    store = MemoryStore()
    collect = Collector()
    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        stream = await connect_and_crash(net, store, collect, client)
        link = net.attach(SERVER)
        try:
            async with open_stack(
                link, [SERVER], store=store, instance="srv", rng=random.Random(4),
                iss_secret=b"server",
            ) as stack:  # fmt: skip
                await stream.send_all(b" after")  # reaches the flow before any listener
                await trio.sleep(1.0)
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        lambda task_status: stack.serve(
                            collect, PORT, commit="manual", task_status=task_status
                        )
                    )
                    await trio.sleep(1.0)
                    nursery.cancel_scope.cancel()
        finally:
            await link.aclose()
    assert collect.calls == [False, True]
    assert b"".join(collect.got) == b"before after"


async def test_a_request_with_the_handshake_is_answered_in_its_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handshake's last ACK hands the flow to its handler before the round that
    stores it (``Runtime._accept_early``), so the request that came with it is read and
    answered in that round: one commit for the handshake, request and answer."""
    net = SimNetwork(5)
    store = MemoryStore()
    async with served_pair(net, store, echo, port=PORT, commit="auto") as client:
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        commits = store.commits
    # the SYN (SYN-RECEIVED), then handshake + request + answer
    assert commits == 2


class StartOutageStore(MemoryStore):
    """A MemoryStore that times out the first ``refusals`` calls of ``next_epoch`` and
    of ``load_many`` (the store goes away in the middle of a restore, too)."""

    refusals = 0

    def _refuse(self) -> None:
        if self.refusals:
            self.refusals -= 1
            raise StoreUnavailable("down for the test")

    async def next_epoch(self) -> int:
        self._refuse()
        return await super().next_epoch()

    async def load_many(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        self._refuse()
        return await super().load_many(flow_ids)


async def test_a_server_restarted_during_a_store_outage_waits_for_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """G7 at start-up: the claim and restore are tried again, from scratch, until the
    store answers -- not a crash of the restarted server -- and the flow is restored
    once, its stream handed over once."""
    net = SimNetwork(6)
    store = StartOutageStore()
    collect = Collector()
    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        stream = await connect_and_crash(net, store, collect, client)
        store.refusals = 3  # two epochs, then a restore halfway: after its claim
        async with server_incarnation(net, store, collect, seed=4) as stack:
            assert stack.runtime.stats["store_unavailable"] == 3
            assert stack.runtime.restored == 1 and len(stack.runtime.flows) == 1
            await stream.send_all(b" after")
            await trio.sleep(1.0)
    assert collect.calls == [False, True]
    assert b"".join(collect.got) == b"before after"


async def test_a_server_restarted_under_another_name_takes_its_flows_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """G5 on an upgrade: a stack restores every flow of its store, so its fencing epoch
    is the store's too, not its ``instance`` name's. A server restarted under a new name
    -- a new release's -- carries the old one's connections on. (Each name had its own
    epoch counter: the renamed server's first epoch, below the one the old name had
    reached, was fenced off by every flow, which it left unrestored: they hung.)"""
    net = SimNetwork(8)
    store = MemoryStore()
    collect = Collector()
    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        stream = await connect_and_crash(net, store, collect, client)  # an epoch of "srv"
        async with server_incarnation(net, store, collect, seed=4):  # and another one
            await trio.sleep(0.5)
        async with server_incarnation(net, store, collect, seed=5, instance="srv-2") as stack:
            assert stack.runtime.restored == 1
            await stream.send_all(b" after")
            await trio.sleep(1.0)
    assert b"".join(collect.got) == b"before after"


@asynccontextmanager
async def one_served(store: MemoryStore) -> AsyncIterator[tuple[Stream, Stream]]:
    """A client connection and the server's stream of it, ``b"one"`` read by the server
    (its handler keeps the stream and does nothing): yields (client end, server end)."""
    net = SimNetwork(7)
    streams: list[Stream] = []

    async def keep(stream: Stream) -> None:
        streams.append(stream)
        await trio.sleep_forever()

    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        server_incarnation(net, store, keep, seed=3),
    ):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"one")
        await trio.sleep(1.0)
        (served,) = streams
        assert await served.receive_some() == b"one"
        yield stream, served


async def test_a_commit_the_store_refuses_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """G2 from the app's side: another instance claimed the flow while its commit was on
    the way, so the store refused it -- ``commit`` raises instead of returning as if the
    offset were durable (before the twentieth session it returned: the flow was gone,
    and ``wait_durable`` took that for done)."""
    store = MemoryStore()
    async with one_served(store) as (_, served):
        (flow_id,) = await store.list_flows()
        assert await store.claim_many([flow_id], await store.next_epoch()) == [flow_id]
        with pytest.raises(trio.BrokenResourceError, match="before this was durable"):
            await served.commit()
        record = store.load_sync(flow_id)
        assert record is not None and record.commit_offset == 0


async def test_a_commit_held_through_an_outage_and_then_fenced_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """During an outage the stack keeps the flow's deltas, two or more of them; when the
    store is back another instance owns the flow and refuses them. The commit waiting
    on them raises: the first refused delta lets the flow go, and the second must not
    pass for a moot commit of a finished stream (a review found it reported durable)."""
    store = OutageStore()
    async with one_served(store) as (stream, served), trio.open_nursery() as nursery:
        store.down = True
        outcome: list[str] = []
        ended = trio.Event()

        async def commit() -> None:
            try:
                await served.commit()
                outcome.append("durable")
            except trio.BrokenResourceError:
                outcome.append("broken")
            ended.set()

        nursery.start_soon(commit)
        await trio.sleep(0.5)
        await stream.send_all(b"two")  # a second delta of the flow, held too
        await trio.sleep(0.5)
        (flow_id,) = await store.list_flows()
        assert await store.claim_many([flow_id], await store.next_epoch()) == [flow_id]
        store.down = False
        with trio.fail_after(10):
            await ended.wait()
        assert outcome == ["broken"]
        nursery.cancel_scope.cancel()


async def test_a_fenced_flow_s_late_segments_get_no_rst(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """G5: another instance claims the flow (a newer epoch), so this one's next write is
    refused and it lets the flow go (``flows_fenced``). Segments for it that still reach
    this instance -- queued on its device, or resent -- are dropped quietly: a RST,
    in step with the client, would reset the connection the new owner carries on."""
    net = SimNetwork(7)
    store = MemoryStore()
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        server_incarnation(net, store, Collector(), seed=3) as stack,
    ):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"one")
        await trio.sleep(1.0)
        (flow_id,) = await store.list_flows()
        epoch = await store.next_epoch()
        assert await store.claim_many([flow_id], epoch) == [flow_id]
        await stream.send_all(b"two")  # the server's write of it is refused
        await trio.sleep(5.0)  # the client resends it: no such flow here any more
        stats = stack.runtime.stats
        assert stats["flows_fenced"] == 1
        assert stats["fenced_dropped"] >= 1
        assert stats["rst_sent"] == 0
        await stream.send_all(b"three")  # the connection is not reset
    # The handler's end is news, not a failure: one line, no traceback.
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_bytes_a_closed_connection_left_uncommitted_are_replayed_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """G4 when TCP finishes before the app: the client sends 10 KB and its FIN, the
    server's app reads and commits 1 KB, half-closes, and the client's ACK of that FIN
    ends the connection (LAST-ACK -> CLOSED) -- 9 KB received, never committed. Its
    store record stays until the app commits them or closes the stream: after a crash
    they are replayed, then EOF. (The record went at once, and the crash lost them:
    crash fuzz seed 3,018,688, a relay whose upstream a RST ended in TIME-WAIT.)"""
    net = SimNetwork(1)
    store = MemoryStore()
    replay: list[tuple[bool, int, bytes]] = []
    replayed = trio.Event()

    async def second_life(stream: Stream) -> None:
        got = bytearray()
        while data := await stream.receive_some():
            got += data
        await stream.commit()
        replay.append((stream.recovered, stream.commit_offset, bytes(got)))
        replayed.set()

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with kept_stream(net, store, client) as (server, _):
            assert server.runtime.flows == {}  # (TCP is done with it)
        async with server_incarnation(net, store, second_life, seed=4):
            with trio.fail_after(10):
                await replayed.wait()
            await trio.sleep(1)
            assert await store.list_flows() == []  # all committed, the stream closed: gone
    assert replay == [(True, len(KEPT_PAYLOAD), KEPT_PAYLOAD[1024:])]


@pytest.mark.parametrize("close", ["abort", "aclose"])
async def test_a_stream_its_app_dropped_is_not_kept_for_replay(
    close: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The other side of the test above: an app that aborts, or closes with bytes
    unread (a RST), has dropped what it did not commit -- its record goes, and no
    restart hands the connection back (a review of the fix found it kept and replayed)."""
    net = SimNetwork(1)
    store = MemoryStore()
    dropped = trio.Event()
    second_life: list[Stream] = []

    async def first_life(stream: Stream) -> None:
        data = await stream.receive_some(1024)
        await stream.commit(len(data))
        await trio.sleep(1)  # the rest arrives, unread
        await (stream.abort() if close == "abort" else stream.aclose())
        dropped.set()

    async def collect(stream: Stream) -> None:
        second_life.append(stream)

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, first_life, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(bytes(10240))
            with trio.fail_after(10):
                await dropped.wait()
            await trio.sleep(1)
            assert await store.list_flows() == []
        async with server_incarnation(net, store, collect, seed=4):
            await trio.sleep(2)
    assert second_life == []


KEPT_PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@asynccontextmanager
async def kept_stream(
    net: SimNetwork, store: MemoryStore, client: Stack
) -> AsyncIterator[tuple[Stack, Stream]]:
    """A server life whose stream TCP has closed (the client sent 10 KB and its FIN,
    the app committed 1 KB, half-closed, and the client's ACK of that FIN came): its
    record is kept for the 9 KB not committed. Yields the server and that stream."""
    streams: list[Stream] = []
    closed_ours = trio.Event()

    async def first_life(stream: Stream) -> None:
        data = await stream.receive_some(1024)
        await stream.commit(len(data))
        await trio.sleep(1)  # the rest and the client's FIN arrive meanwhile
        await stream.send_eof()
        streams.append(stream)
        closed_ours.set()
        await trio.sleep_forever()

    async with server_incarnation(net, store, first_life, seed=3) as server:
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(KEPT_PAYLOAD)
        await stream.send_eof()
        with trio.fail_after(10):
            await closed_ours.wait()
            assert await stream.receive_some() == b""  # the server's FIN
        await trio.sleep(1)  # the ACK of that FIN: the server's side is CLOSED
        (served,) = streams
        assert served.tcp_state is TcpState.CLOSED
        assert await store.list_flows() == [served.flow_id]  # kept
        yield server, served


@pytest.mark.parametrize("taken", ["fenced", "lost"])
async def test_a_commit_on_a_kept_stream_whose_record_is_gone_raises(
    taken: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A kept stream (above) whose record another instance has claimed meanwhile, or
    the store has lost: the app's commit of the rest raises instead of waiting for ever
    (a review found it waiting: neither refusal woke a closed flow's waiters)."""
    net = SimNetwork(1)
    store = MemoryStore()
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        kept_stream(net, store, client) as (server, served),
    ):
        if taken == "fenced":
            flows = await store.list_flows()
            assert await store.claim_many(flows, await store.next_epoch()) == flows
        else:
            await store.forget(served.flow_id, 1 << 40)
        while await served.receive_some():
            pass
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError, match="durable"):
            await served.commit()
        assert server.runtime.stats["flows_fenced" if taken == "fenced" else "flows_lost"] == 1


@pytest.mark.parametrize("how", ["abort", "raise"])
async def test_a_fenced_flow_s_abort_sends_no_rst(
    how: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """G5: the app aborts (or its handler raises, which aborts) a stream whose flow a
    newer instance has claimed meanwhile. The abort's delta is refused, and its RST must
    not leave: it would reset the connection the new owner carries on (a review found it
    sent -- the refused delta of a connection that ended in that round passed for a moot
    one, durable)."""
    net = SimNetwork(1)
    store = MemoryStore()
    go = trio.Event()

    async def handler(stream: Stream) -> None:
        await stream.receive_some(5)
        await go.wait()
        if how == "abort":
            await stream.abort()
        else:
            raise RuntimeError("a handler's bug")

    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        server_incarnation(net, store, handler, seed=3) as server,
    ):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"hello")
        await trio.sleep(0.5)
        flows = await store.list_flows()
        assert await store.claim_many(flows, await store.next_epoch()) == flows
        go.set()
        await trio.sleep(0.5)
        assert server.runtime.stats["flows_fenced"] == 1
        with trio.move_on_after(5):
            await stream.receive_some()
            pytest.fail("the client's connection heard from the fenced instance")
        assert stream.tcp_state is TcpState.ESTABLISHED
        assert await store.list_flows() == flows  # the new owner's


@pytest.mark.parametrize("outage", ["brief", "until the crash"])
async def test_a_stream_its_peer_reset_is_never_replayed(
    outage: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A level-2 stream whose peer reset it mid-request: its app saw the reset, and its
    record goes. A forget that meets a store outage is tried again until it lands
    (it was dropped); and a record that outlives the process all the same (the crash
    came first) is forgotten by the next start, not handed back as a stream -- which
    would end in a clean EOF, a truncated request looking complete (a review found
    both, twenty-second session)."""
    net = SimNetwork(1)
    store = OutageStore()
    first: list[object] = []
    second: list[Stream] = []

    async def first_life(stream: Stream) -> None:
        first.append(await stream.receive_some())
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        first.append("reset")
        await trio.sleep_forever()

    async def second_life(stream: Stream) -> None:
        second.append(stream)

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        async with server_incarnation(net, store, first_life, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"PUT /x, 100 bytes: the first 25")
            await trio.sleep(0.5)
            store.forgets_down = True
            await stream.abort()
            await trio.sleep(1)
            assert first == [b"PUT /x, 100 bytes: the first 25", "reset"]
            assert len(await store.list_flows()) == 1  # not forgotten yet
            if outage == "brief":
                store.forgets_down = False
                await trio.sleep(1)
                assert await store.list_flows() == []
        store.forgets_down = False
        async with server_incarnation(net, store, second_life, seed=4):
            await trio.sleep(2)
            assert await store.list_flows() == []
    assert second == []


async def test_a_connection_restored_before_its_handshake_is_done_is_not_left_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The stack crashed while the handshake was under way: in SYN-SENT (an app's
    ``connect`` that never returned, so no app knows the flow) its record is forgotten,
    and the peer's half-open connection reset; in SYN-RECEIVED, once the handshake
    completes after the restart on a port nobody listens on, it waits for the grace
    period like any restored stream, then is reset (a review found both left open for
    good, with their records: twenty-second session)."""
    net = SimNetwork(3)
    store = MemoryStore()
    syn_acks = {"dropped": 0}

    def drop_syn_acks(event: TapEvent) -> TapVerdict | None:
        if event.phase == "send" and event.src == BACKEND and syn_acks["dropped"] < 1:
            syn_acks["dropped"] += 1
            return TapVerdict.DROP
        return None

    async with backend_keeping_streams(net) as (upstream, accepted, nursery):
        net.tap = drop_syn_acks
        async with client_incarnation(net, store, 10) as stack:

            async def connect() -> None:
                await stack.connect(BACKEND, 7, commit="manual")

            nursery.start_soon(connect)  # (outlives the crash: no abort runs)
            await trio.sleep(0.5)
            assert [f.conn.state for f in stack.runtime.flows.values()] == [TcpState.SYN_SENT]
            assert len(await store.list_flows()) == 1
        net.tap = None
        async with client_incarnation(net, store, 11, unclaimed_grace=3.0) as stack:
            assert stack.runtime.restored == 0
            await trio.sleep(10)
            assert stack.runtime.flows == {} and await store.list_flows() == []
            # the backend got the SYN, its SYN-ACK met a RST: nothing accepted there
            assert accepted == [] and upstream.runtime.flows == {}


async def test_a_stream_restored_in_syn_received_nobody_takes_is_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(3)
    store = MemoryStore()
    sent = {"client": 0}

    def only_the_syn(event: TapEvent) -> TapVerdict | None:
        if event.phase == "send" and event.src == CLIENT:
            sent["client"] += 1
            if sent["client"] > 1:
                return TapVerdict.DROP
        return None

    async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
        net.tap = only_the_syn  # the handshake's ACK and data are lost
        async with server_life(
            net, store, Collector(), seed=3, port=PORT, commit="manual", instance="srv"
        ) as server:
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"hello")
            await trio.sleep(0.2)
            states = [f.conn.state for f in server.runtime.flows.values()]
            assert states == [TcpState.SYN_RECEIVED]
        net.tap = None
        link = net.attach(SERVER)
        try:
            async with open_stack(
                link, [SERVER], store=store, rng=random.Random(4), instance="srv",
                unclaimed_grace=3.0,
            ) as server:  # fmt: skip
                server.listen(9)  # the new version of the app serves another port only
                await trio.sleep(2)
                assert server.runtime.stats["unclaimed_reset"] == 0
                await trio.sleep(10)
                assert server.runtime.stats["unclaimed_reset"] == 1
                assert server.runtime.flows == {} and await store.list_flows() == []
                assert stream.tcp_state is TcpState.CLOSED
        finally:
            await link.aclose()
