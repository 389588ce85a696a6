"""The ``Stream``, ``Listener`` and ``Stack`` API over the simulator (trio's contract).

Every test runs two stacks from ``stcp_framework.testing.open_sim_pair`` on trio's
``MockClock(autojump_threshold=0)``; the ``fail_after`` budgets are virtual seconds.
"""

from __future__ import annotations

import ipaddress
import logging

import pytest
import trio
import trio.testing

from stcp_framework.api import Stream
from stcp_framework.errors import (
    ConnectionAborted,
    ConnectionRefused,
    ConnectionResetByPeer,
    ConnectionTimedOut,
)
from stcp_framework.services import echo
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.events import Aborted
from stcp_framework.tcp.state import TcpState
from stcp_framework.testing import (
    CHECK_CONFIG,
    CLIENT_ADDRESS,
    CLIENT_ADDRESS6,
    SERVER_ADDRESS,
    SERVER_ADDRESS6,
    clog,
    open_sim_pair,
    send_space,
)
from stcp_framework.wire.drop import DropReason
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, FIN, NO_OPTIONS, PSH, RST, TcpSegment

PORT = 7
BUDGET = 600.0  # virtual seconds; a hang fails instead of spinning forever


async def receive_exactly(stream: Stream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


# ----------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("ipv6", "client_host", "server_host"),
    [(False, CLIENT_ADDRESS, SERVER_ADDRESS), (True, CLIENT_ADDRESS6, SERVER_ADDRESS6)],
)
async def test_local_and_remote_address(
    autojump_clock: trio.testing.MockClock, ipv6: bool, client_host: str, server_host: str
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(10, ipv6=ipv6) as pair:
            listener = pair.server.listen(PORT)
            client, server = await pair.stream_pair(listener)
            host, port = client.local_address
            assert host == client_host
            assert 32768 <= port < 61000  # Linux ip_local_port_range
            assert client.remote_address == (server_host, PORT)
            assert server.local_address == (server_host, PORT)
            assert server.remote_address == client.local_address
            assert client.tcp_state is TcpState.ESTABLISHED
            assert server.tcp_state is TcpState.ESTABLISHED
            await client.aclose()
            await server.aclose()


async def test_each_connect_gets_its_own_ephemeral_port(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(11) as pair:
            listener = pair.server.listen(PORT)
            pairs = [await pair.stream_pair(listener) for _ in range(20)]
            ports = {client.local_address[1] for client, _ in pairs}
            assert len(ports) == 20
            for client, server in pairs:
                await client.aclose()
                await server.aclose()


# ------------------------------------------------------------- busy / closed


async def test_concurrent_receive_is_busy(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(12) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            with pytest.RaisesGroup(trio.BusyResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.receive_some, 10)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(server.receive_some, 10)
            await client.aclose()
            await server.aclose()


async def test_concurrent_send_is_busy(autojump_clock: trio.testing.MockClock) -> None:
    """A second sender while the first waits for window (the stream is clogged)."""
    with trio.fail_after(BUDGET):
        async with open_sim_pair(13, config=CHECK_CONFIG) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            await clog(client)
            assert send_space(client) == 0
            with pytest.RaisesGroup(trio.BusyResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, b"a")
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(client.send_all, b"b")
            with pytest.RaisesGroup(trio.BusyResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, b"a")
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(client.send_eof)
            await client.aclose()
            await server.aclose()


async def test_every_call_after_aclose_is_closed_resource_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(14) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            await client.aclose()
            await client.aclose()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"")
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some(1)
            with pytest.raises(trio.ClosedResourceError):
                await client.send_eof()
            with pytest.raises(trio.ClosedResourceError):
                await client.wait_send_all_might_not_block()
            # The peer sees an orderly close (FIN), not an error.
            assert await server.receive_some(10) == b""
            await server.aclose()


async def test_send_after_send_eof_is_closed_but_receive_continues(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(15) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            await client.send_all(b"question")
            await client.send_eof()
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"more")
            assert await receive_exactly(server, 8) == b"question"
            assert await server.receive_some(10) == b""
            assert server.tcp_state is TcpState.CLOSE_WAIT
            await server.send_all(b"answer")
            await server.send_eof()
            assert await receive_exactly(client, 6) == b"answer"
            assert await client.receive_some(10) == b""
            await client.aclose()
            await server.aclose()


# ------------------------------------------------------------------- resets


async def test_peer_reset_is_broken_resource_error_caused_by_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(16) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            await server.abort()  # RST
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.receive_some(10)
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)
            # Once broken, it stays broken, on both directions.
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.send_all(b"x")
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)
            assert client.tcp_state is TcpState.CLOSED
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some(10)


async def test_a_reset_that_came_with_data_is_the_cause_before_its_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The peer's data and RST arrive in one batch: the machine is CLOSED before the
    round that records the reset as ``flow.error``, and a send meets the closed state
    first -- its error carries the cause all the same (it said only "the connection is
    closed", the next call had the cause)."""
    with trio.fail_after(BUDGET):
        async with open_sim_pair(19) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            conn = server._flow.conn
            tcb = conn.tcb
            rst = TcpSegment(
                src_port=0,  # (the machine is past demultiplexing)
                dst_port=0,
                seq=tcb.rcv_nxt,
                ack=0,
                flags=RST,
                window=0,
                urgent=0,
                options=NO_OPTIONS,
                payload=b"",
            )
            conn.on_segment(rst, pair.server.runtime.now())  # no round in between
            assert server.tcp_state is TcpState.CLOSED and server._flow.error is None
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.send_all(b"x")
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)
            assert "reset the connection" in str(info.value)
            await client.aclose()


async def test_a_connection_the_stack_aborted_is_broken_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Aborted`` (a restored async-mode flow that lost acknowledged bytes resets
    itself, ``tcp/_arrive.acked_bytes_lost``) reaches the app as ``ConnectionAborted``
    with the machine's reason, and is counted."""
    with trio.fail_after(BUDGET):
        async with open_sim_pair(18) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            runtime = pair.server.runtime
            runtime._on_events(server._flow, [Aborted("acknowledged bytes were lost")])
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.receive_some(10)
            assert isinstance(info.value.__cause__, ConnectionAborted)
            assert str(info.value) == "acknowledged bytes were lost"
            assert runtime.stats["reset_after_loss"] == 1
            await client.aclose()


async def test_close_with_unread_data_resets_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Linux close(): unread received data turns the FIN into a RST (RFC 2525 §2.17)."""
    with trio.fail_after(BUDGET):
        async with open_sim_pair(17) as pair:
            client, server = await pair.stream_pair(pair.server.listen(PORT))
            await client.send_all(b"unread")
            await trio.sleep(1)  # the bytes arrive at the server
            await server.aclose()
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.receive_some(10)
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)


# ------------------------------------------------------------------ connect


async def test_connect_to_closed_port_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(18) as pair:
            start = trio.current_time()
            with pytest.raises(ConnectionRefused):
                await pair.client.connect(pair.server_address, 4444)
            # One round trip: SYN out, RST+ACK back (RFC 9293 §3.10.7.1).
            assert trio.current_time() - start == pytest.approx(2 * pair.network.delay)
            assert pair.server.runtime.stats["rst_sent"] == 1
            assert not pair.client.runtime.flows


async def test_connect_across_a_partition_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """SYN retransmissions back off 1, 2, 4, ... s (RFC 6298 (5.5)) until syn_retries."""
    config = TcpConfig(syn_retries=3)
    with trio.fail_after(BUDGET):
        async with open_sim_pair(19, config=config) as pair:
            pair.network.partition(pair.client_link, pair.server_link)
            start = trio.current_time()
            with pytest.raises(ConnectionTimedOut):
                await pair.client.connect(pair.server_address, PORT)
            # SYN at 0, retransmits at 1, 3, 7; give up at 15 (Linux tcp_syn_retries math).
            assert trio.current_time() - start == pytest.approx(1 + 2 + 4 + 8)
            assert pair.client_link.counters.dropped_by_reason["partition"] == 4
            assert not pair.client.runtime.flows


async def test_cancelled_connect_leaves_no_flow(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(20) as pair:
            pair.network.partition(pair.client_link, pair.server_link)
            with trio.move_on_after(2.5):
                await pair.client.connect(pair.server_address, PORT)
            await trio.sleep(1)
            assert not pair.client.runtime.flows


# ------------------------------------------------------------------ listener


@pytest.mark.parametrize(
    ("flags", "payload", "answer"),
    [
        (FIN, b"", None),  # other control without ACK: dropped (RFC 9293 §3.10.7.2)
        (PSH, b"text", None),  # text without ACK: dropped
        (FIN | PSH, b"x", None),
        (ACK, b"", (5555, 0, RST)),  # an ACK: <SEQ=SEG.ACK><CTL=RST>
    ],
)
async def test_a_listening_port_answers_only_an_ack_with_a_rst(
    flags: int,
    payload: bytes,
    answer: tuple[int, int, int] | None,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_pair(1) as pair:
        pair.server.listen(PORT)
        raw = pair.network.attach("198.18.0.3")
        src, dst = (ipaddress.ip_address(a).packed for a in ("198.18.0.3", pair.server_address))
        await raw.send_batch(
            [
                bytes(
                    build_packet(
                        src, dst, 40000, PORT, 1000, 5555, flags, 1000, NO_OPTIONS, payload
                    )
                )
            ]
        )
        got = []
        with trio.move_on_after(1):
            for buf in await raw.recv_batch(10):
                seg = parse_packet_untrusted(buf).tcp
                got.append((seg.seq, seg.ack, seg.flags))
        assert got == ([] if answer is None else [answer])


async def test_listener_backlog_drops_and_counts_extra_syns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SYNs beyond the backlog are dropped (Linux), the clients get in on retransmission
    -- with SYN cookies off (``syn_cookies=False``; ``test_syn_cookies.py`` has them)."""
    with trio.fail_after(BUDGET):
        async with open_sim_pair(21) as pair:
            pair.server.runtime._cookies = None
            listener = pair.server.listen(PORT, backlog=2)
            streams: list[Stream] = []

            async def connect_one() -> None:
                streams.append(await pair.client.connect(pair.server_address, PORT))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(connect_one)
                await trio.sleep(0.5)  # before the first SYN retransmission (1 s)
                drops = pair.server.runtime.drops
                assert drops[DropReason.BACKLOG_FULL] == 3
                assert len(streams) == 2
                accepted = [await listener.accept(), await listener.accept()]
                # The three clients retransmit their SYN at 1 s: two fit in the backlog.
                await trio.sleep(1)
                assert len(streams) == 4
                assert drops[DropReason.BACKLOG_FULL] == 4
                accepted += [await listener.accept(), await listener.accept()]
                accepted.append(await listener.accept())  # the last one, at 3 s
            assert len(streams) == 5
            assert trio.current_time() == pytest.approx(3 + 2 * pair.network.delay, abs=0.01)
            assert sorted(s.local_address for s in streams) == sorted(
                s.remote_address for s in accepted
            )
            await listener.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await listener.accept()


async def test_accept_wakes_with_closed_when_listener_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(22) as pair:
            listener = pair.server.listen(PORT)
            async with trio.open_nursery() as nursery:

                async def accept_expecting_closed() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await listener.accept()

                nursery.start_soon(accept_expecting_closed)
                await trio.testing.wait_all_tasks_blocked()
                await listener.aclose()
            # The port is free again: a SYN to it is refused.
            with pytest.raises(ConnectionRefused):
                await pair.client.connect(pair.server_address, PORT)


async def test_handler_exception_resets_only_its_connection(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fragile_echo(stream: Stream) -> None:
        while data := await stream.receive_some(100):
            if data == b"boom":
                raise RuntimeError("handler bug")
            await stream.send_all(data)

    with trio.fail_after(BUDGET):
        async with open_sim_pair(23) as pair, trio.open_nursery() as nursery:
            await nursery.start(pair.server.serve, fragile_echo, PORT)
            good = await pair.client.connect(pair.server_address, PORT)
            bad = await pair.client.connect(pair.server_address, PORT)
            await good.send_all(b"hello")
            assert await receive_exactly(good, 5) == b"hello"
            with caplog.at_level(logging.ERROR, logger="stcp.api"):
                await bad.send_all(b"boom")
                with pytest.raises(trio.BrokenResourceError) as info:
                    await bad.receive_some(10)
            assert isinstance(info.value.__cause__, ConnectionResetByPeer)
            assert "handler failed" in caplog.text
            # The other connection and the server carry on.
            await good.send_all(b"still here")
            assert await receive_exactly(good, 10) == b"still here"
            third = await pair.client.connect(pair.server_address, PORT)
            await third.send_all(b"new")
            assert await receive_exactly(third, 3) == b"new"
            for stream in (good, bad, third):
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_request_response_server_sends_three_segments(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Client closes first, as a short HTTP/1.0 exchange. The server sends its SYN-ACK,
    # the answer -- which carries the window update the read of the request made due
    # (the answer joins the read's round: Runtime.hold) -- and its FIN, which carries
    # the delayed ACK of the client's FIN (RFC 1122 §4.2.3.2; Linux does the same).
    with trio.fail_after(BUDGET):
        async with open_sim_pair(25) as pair, trio.open_nursery() as nursery:
            await nursery.start(pair.server.serve, echo, PORT)
            stats = pair.server.runtime.stats
            for _ in range(3):
                before = stats["packets_out"]
                client = await pair.client.connect(pair.server_address, PORT)
                await client.send_all(b"x" * 100)
                assert await receive_exactly(client, 100) == b"x" * 100
                await client.aclose()
                await trio.sleep(1)
                assert not pair.server.runtime.flows
                assert stats["packets_out"] - before == 3
            nursery.cancel_scope.cancel()


async def test_serve_echo_closes_after_handler_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(24) as pair, trio.open_nursery() as nursery:
            await nursery.start(pair.server.serve, echo, PORT)
            client = await pair.client.connect(pair.server_address, PORT)
            await client.send_all(b"ping")
            await client.send_eof()
            assert await receive_exactly(client, 4) == b"ping"
            assert await client.receive_some(10) == b""
            await client.aclose()
            # Orderly close on both ends: the client (active closer of the last FIN
            # exchange) holds TIME-WAIT, the server flow is gone.
            await trio.sleep(1)
            assert not pair.server.runtime.flows
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------- tcp_info


async def test_tcp_info_reports_the_connection_numbers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sim_pair(12, loss=0.05) as pair:
            listener = pair.server.listen(PORT)
            client, server = await pair.stream_pair(listener)
            before = client.tcp_info
            assert before.state == "ESTABLISHED" and before.unacked == 0
            assert before.sack and before.timestamps and before.window_scaling
            data = bytes(range(256)) * 2000  # 512 KB over a lossy link
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, data)
                assert await receive_exactly(server, len(data)) == data
            info = client.tcp_info
            assert info.srtt is not None and info.rto >= 0.2  # Linux-like min_rto
            assert 0 < info.mss <= 65535 - 40 - 12 and info.cwnd > 0
            assert info.counters["retransmit"] > 0  # 5 % loss: something was resent
            assert server.tcp_info.counters.get("sack_ack_sent", 0) > 0
            info.counters["retransmit"] = -1  # a snapshot: the connection's own is untouched
            assert client.tcp_info.counters["retransmit"] > 0
            # the stack's totals (`netstat -s`): the live connection's, then the ended
            # one's (the server closes last: its flow ends without TIME-WAIT)
            resent = client.tcp_info.counters["retransmit"]
            assert pair.client.runtime.tcp_totals()["retransmit"] == resent
            sacked = server.tcp_info.counters["sack_ack_sent"]
            await client.aclose()
            assert await server.receive_some(10) == b""  # the client's FIN first
            await server.aclose()
            for _ in range(500):  # (bounded: 5 virtual seconds)
                if not pair.server.runtime.flows:
                    break
                await trio.sleep(0.01)
            assert not pair.server.runtime.flows
            assert pair.server.runtime.tcp_totals()["sack_ack_sent"] >= sacked
