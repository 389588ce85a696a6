"""Property tests (STYLE.md §9.3): random inputs never break the machine, and two
machines over a lossy, reordering, duplicating pipe transfer bytes exactly."""

from __future__ import annotations

import heapq
import random
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_helpers import CONFIG, LOCAL_SEQ, REMOTE_SEQ, conn_established, r, sq

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.delta import RxAppend, RxTrim, TcbSet, TxAppend, TxTrim
from stcp_framework.tcp.errors import LocalProtocolError
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.step import Step
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.seq import Seq, seq_le
from stcp_framework.wire.tcp import TcpOptions, TcpSegment


class Mirror:
    """A store that applies deltas the way the contract says; checks them on the way."""

    def __init__(self) -> None:
        self.version = 0
        self.tcb: dict[str, Any] = {}
        self.rx = bytearray()
        self.rx_base = 0
        self.tx = bytearray()
        self.tx_base = 0

    def apply(self, conn: Connection, step: Step) -> None:
        delta = step.delta
        if delta is not None:
            assert delta.version == self.version + 1
            self.version = delta.version
            for op in delta.ops:
                if isinstance(op, TcbSet):
                    self.tcb.update(op.fields)
                elif isinstance(op, RxAppend):
                    assert op.offset == self.rx_base + len(self.rx)
                    self.rx += op.data
                elif isinstance(op, RxTrim) and op.below > self.rx_base + len(self.rx):
                    self.rx.clear()  # never stored (ack-on-commit): continue at below
                    self.rx_base = op.below
                elif isinstance(op, TxAppend):
                    assert op.offset == self.tx_base + len(self.tx)
                    self.tx += op.data
                elif isinstance(op, RxTrim):
                    del self.rx[: op.below - self.rx_base]
                    self.rx_base = op.below
                elif isinstance(op, TxTrim):
                    del self.tx[: op.below - self.tx_base]
                    self.tx_base = op.below
        for seg in step.segments:
            assert seg.needs_version <= self.version
        # Every persisted field change was recorded: the mirror equals the live TCB.
        assert self.tcb == conn.tcb.to_record()
        assert Tcb.from_record(self.tcb) == conn.tcb
        assert bytes(self.tx) == bytes(
            conn.snd_buf.view(conn.snd_buf.base_offset, len(conn.snd_buf))
        )
        assert self.tx_base == conn.snd_buf.base_offset


def _wire(seg: Any, src: int, dst: int) -> TcpSegment:
    return TcpSegment(
        src, dst, seg.seq, seg.ack, seg.flags, seg.window, 0, seg.options, bytes(seg.payload)
    )


# ------------------------------------------------------------------ (a) random inputs

seqs = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(-3, 40000).map(lambda d: sq(REMOTE_SEQ, d)),
)
acks = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(-3, 40000).map(lambda d: sq(LOCAL_SEQ, d)),
)
segments = st.builds(
    lambda seq, ack, flags, window, payload, ts: r(
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        payload=payload,
        options=TcpOptions(timestamps=ts),
    ),
    seqs,
    acks,
    st.integers(0, 0x3F),
    st.integers(0, 0xFFFF),
    st.binary(max_size=3000),
    st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("seg"), segments),
        st.tuples(st.just("send"), st.binary(max_size=5000)),
        st.tuples(st.just("recv"), st.integers(0, 10000)),
        st.tuples(st.just("timer"), st.floats(0, 200)),
        st.tuples(st.just("call"), st.sampled_from(["shutdown", "close", "abort"])),
    ),
    max_size=40,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(actions, st.booleans(), st.booleans())
def test_random_inputs_keep_invariants(acts: list[tuple[str, Any]], ts: bool, aoc: bool) -> None:
    config = replace(
        CONFIG, timestamps=ts, recv_buffer_size=8000, send_buffer_size=20000, ack_on_commit=aoc
    )
    opts = TcpOptions(mss=1000, timestamps=(100, 0) if ts else None)
    conn = conn_established(config, options=opts)
    mirror = Mirror()
    mirror.version = conn.version
    mirror.tcb = conn.tcb.to_record()
    now = 1.0
    for kind, arg in acts:
        now += 0.01
        if kind == "seg":
            conn.on_segment(arg, now)
        elif kind == "send":
            try:
                assert conn.app_send(arg, now) <= len(arg)
            except LocalProtocolError:
                assert not conn.state.can_send() or conn.tcb.app_closed
        elif kind == "recv":
            conn.app_receive(arg, now)
        elif kind == "timer":
            now += arg
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.on_timer(now)
        else:
            getattr(conn, f"app_{arg}")(now)
        conn.check_invariants()
        assert isinstance(conn.state, TcpState)
        assert seq_le(conn.tcb.snd_una, conn.tcb.snd_nxt)
        assert conn.recv_available <= config.recv_buffer_size
        mirror.apply(conn, conn.drain())
        deadline = conn.next_deadline()
        if conn.state is TcpState.CLOSED:
            assert deadline is None


# ------------------------------------------------------------------ (b) transfer


class Pipe:
    """Seeded loss, duplication and reordering with per-packet delay."""

    def __init__(self, rng: random.Random, loss: float, dup: float, jitter: float) -> None:
        self.rng = rng
        self.loss, self.dup, self.jitter = loss, dup, jitter
        self.queue: list[tuple[float, int, Connection, TcpSegment]] = []
        self.n = 0

    def push(self, now: float, dst: Connection, seg: TcpSegment) -> None:
        rng = self.rng
        if rng.random() < self.loss:
            return
        copies = 2 if rng.random() < self.dup else 1
        for _ in range(copies):
            self.n += 1
            at = now + 0.01 + rng.random() * self.jitter
            heapq.heappush(self.queue, (at, self.n, dst, seg))


def _run_pair(
    seed: int,
    data_a: bytes,
    data_b: bytes,
    loss: float,
    dup: float,
    jitter: float,
    config: TcpConfig,
    mss: int,
) -> None:
    rng = random.Random(seed)
    cfg = replace(config, mss=mss)
    a = Connection.open_active(now=0.0, config=cfg, iss=Seq(2**32 - 3000), tsval_offset=11)
    pipe = Pipe(rng, loss, dup, jitter)
    b: Connection | None = None
    mirrors: dict[int, Mirror] = {id(a): Mirror()}
    got = {id(a): bytearray()}
    todo = {id(a): memoryview(data_a)}
    now = 0.0
    first_syn: TcpSegment | None = None

    def flush(conn: Connection, peer: Connection | None) -> None:
        nonlocal first_syn
        step = conn.drain()
        mirrors[id(conn)].apply(conn, step)
        for seg in step.segments:
            wire = _wire(seg, 1, 2)
            if peer is None:
                if rng.random() >= loss:
                    first_syn = wire
            else:
                pipe.push(now, peer, wire)

    for _ in range(20000):
        conns = [c for c in (a, b) if c is not None]
        for conn in conns:
            peer = b if conn is a else a
            buf = todo[id(conn)]
            if conn.state.can_send() and conn.state is not TcpState.SYN_SENT:
                if buf:
                    n = conn.app_send(buf[:7000], now)
                    todo[id(conn)] = buf = buf[n:]
                if not buf:
                    conn.app_shutdown(now)
            if conn.recv_available:
                got[id(conn)] += conn.app_receive(rng.randint(1, 20000), now)
            if conn.at_eof and conn.state is TcpState.CLOSE_WAIT and not todo[id(conn)]:
                conn.app_close(now)
            flush(conn, peer)
        if first_syn is not None and b is None:
            b = Connection.open_passive(
                first_syn, now=now, config=cfg, iss=Seq(2**32 - 77), tsval_offset=5
            )
            mirrors[id(b)] = Mirror()
            got[id(b)] = bytearray()
            todo[id(b)] = memoryview(data_b)
            flush(b, a)
            continue
        done = b is not None and all(
            c.state in (TcpState.CLOSED, TcpState.TIME_WAIT) for c in (a, b)
        )
        if done:
            break
        # Advance the fake clock to the next event.
        candidates = [c.next_deadline() for c in conns]
        times = [t for t in candidates if t is not None]
        if pipe.queue:
            times.append(pipe.queue[0][0])
        assert times, "deadlock: nothing pending"
        now = max(now, min(times))
        while pipe.queue and pipe.queue[0][0] <= now:
            _, _, dst, seg = heapq.heappop(pipe.queue)
            dst.on_segment(seg, now)
            dst.check_invariants()
        for conn in conns:
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.on_timer(now)
    else:
        raise AssertionError("transfer did not finish")
    assert b is not None
    for conn in (a, b):  # bytes that arrived with the last segments
        got[id(conn)] += conn.app_receive(1 << 30, now)
    assert bytes(got[id(b)]) == data_a
    assert bytes(got[id(a)]) == data_b
    assert a.at_eof and b.at_eof


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    len_a=st.integers(0, 200_000),
    len_b=st.integers(0, 50_000),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
    dup=st.sampled_from([0.0, 0.1]),
    jitter=st.sampled_from([0.0, 0.05]),
    ts=st.booleans(),
    ws=st.booleans(),
    mss=st.sampled_from([536, 1460, 9000]),
    aoc=st.booleans(),
    sack=st.booleans(),
)
def test_transfer_over_lossy_pipe(
    seed: int,
    len_a: int,
    len_b: int,
    loss: float,
    dup: float,
    jitter: float,
    ts: bool,
    ws: bool,
    mss: int,
    aoc: bool,
    sack: bool,
) -> None:
    rng = random.Random(seed)
    data_a = rng.randbytes(len_a)
    data_b = rng.randbytes(len_b)
    config = TcpConfig(
        timestamps=ts,
        window_scaling=ws,
        recv_buffer_size=100_000,
        send_buffer_size=30_000,
        max_retries=30,
        syn_retries=30,
        time_wait_timeout=5.0,
        ack_on_commit=aoc,
        sack=sack,
    )
    _run_pair(seed, data_a, data_b, loss, dup, jitter, config, mss)


def test_transfer_bulk_64k_segments() -> None:
    config = TcpConfig(recv_buffer_size=1 << 22, send_buffer_size=1 << 22, time_wait_timeout=5.0)
    data = random.Random(1).randbytes(3_000_000)
    _run_pair(7, data, b"ok", 0.0, 0.0, 0.0, config, 65000)
