"""Hypothesis helpers: a plausible peer, and snapshots of everything a machine holds.

``peer_segment`` draws segments near what a real peer would send next (mostly in
order, acknowledging something in flight, timestamps in order), with occasional
oddities, so random sequences reach deep states; ``snapshot`` turns a ``Connection``
(persisted and runtime parts) into plain values for equality checks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import strategies as st
from tcp_helpers import LOCAL_PORT, REMOTE_PORT

from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.step import Step
from stcp_framework.wire.seq import seq_add, seq_diff
from stcp_framework.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpOptions, TcpSegment

FLAGS = [
    ACK,
    ACK,
    ACK,
    ACK | PSH,
    ACK | PSH,
    ACK | PSH,
    ACK | FIN,
    ACK | PSH | FIN,
    ACK | RST,
    ACK | SYN,
    ACK | URG,
    ACK | 0x40,
    0,
]


def sack_blocks(data: st.DataObject, conn: Connection) -> tuple[tuple[int, int], ...]:
    """Up to 3 SACK blocks around our flight: mostly inside it, sometimes stale (below
    SND.UNA, as a D-SACK), past SND.NXT, or empty."""
    tcb = conn.tcb
    flight = max(seq_diff(tcb.snd_nxt, tcb.snd_una), 0)
    blocks = []
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2, 3]), label="sack blocks")):
        left = data.draw(st.integers(-2000, flight + 100), label="sack left - snd_una")
        size = data.draw(st.sampled_from([0, 1, 536, 1460, 3000]), label="sack size")
        blocks.append((seq_add(tcb.snd_una, left), seq_add(tcb.snd_una, left + size)))
    return tuple(blocks)


def peer_segment(data: st.DataObject, conn: Connection, now: float) -> TcpSegment:
    """A segment from the peer of ``conn``, drawn around ``conn``'s current numbers."""
    tcb = conn.tcb
    seq_off = data.draw(
        st.sampled_from([0] * 12 + [-1, 1, 700, -700, 2**31, 40000]) | st.integers(-3000, 70000),
        label="seq - rcv_nxt",
    )
    flight = seq_diff(tcb.snd_nxt, tcb.snd_una)
    ack_off = data.draw(
        st.sampled_from([0, 0, flight, flight, flight, flight // 2, flight + 1, -1, -70000])
        | st.integers(-2, flight + 2),
        label="ack - snd_una",
    )
    flags = data.draw(st.sampled_from(FLAGS), label="flags")
    window = data.draw(
        st.sampled_from([tcb.snd_wnd >> tcb.snd_wscale, 0, 0xFFFF, 3000]) | st.integers(0, 0xFFFF),
        label="window",
    )
    plen = data.draw(
        st.sampled_from([0, 0, 1, 1460, 1448, 536, 20000]) | st.integers(0, 3000),
        label="payload length",
    )
    opts = TcpOptions()
    if tcb.timestamps:
        ts = data.draw(st.sampled_from([0, 0, 1, 5, -1, 2**31]) | st.none(), label="tsval")
        if ts is not None:
            tsecr = (conn.tsval(now) - data.draw(st.integers(0, 100))) & 0xFFFFFFFF
            opts = TcpOptions(timestamps=((tcb.ts_recent + ts) & 0xFFFFFFFF, tsecr))
    if tcb.sack_permitted:
        opts = opts._replace(sack_blocks=sack_blocks(data, conn))
    fill = data.draw(st.integers(0, 255), label="fill byte")
    return TcpSegment(
        src_port=REMOTE_PORT,
        dst_port=LOCAL_PORT,
        seq=seq_add(tcb.rcv_nxt, seq_off),
        ack=seq_add(tcb.snd_una, ack_off),
        flags=flags,
        window=window,
        urgent=0,
        options=opts,
        payload=memoryview(bytes([fill]) * plen),
    )


def likely_segment(data: st.DataObject, conn: Connection, now: float) -> TcpSegment:
    """Mostly what a bulk peer sends next: in order, ACK (+PSH), timestamps in order,
    acknowledging part or all of our flight, window unchanged or moved a little."""
    if data.draw(st.integers(0, 3), label="odd segment") == 0:
        return peer_segment(data, conn, now)
    tcb = conn.tcb
    flight = seq_diff(tcb.snd_nxt, tcb.snd_una)
    ack_off = data.draw(
        st.sampled_from([0, flight]) | st.integers(0, max(flight, 0)), label="ack - snd_una"
    )
    wnd = tcb.snd_wnd >> tcb.snd_wscale
    window = data.draw(st.sampled_from([wnd, wnd, wnd + 1, max(wnd - 1, 0), 0]), label="window")
    plen = data.draw(
        st.sampled_from([0, 1448, 1460]) | st.integers(0, 2000), label="payload length"
    )
    opts = TcpOptions()
    if tcb.timestamps:
        tsval = (tcb.ts_recent + data.draw(st.integers(0, 3), label="tsval step")) & 0xFFFFFFFF
        opts = TcpOptions(timestamps=(tsval, conn.tsval(now)))
    if tcb.sack_permitted:
        opts = opts._replace(sack_blocks=sack_blocks(data, conn))
    return TcpSegment(
        REMOTE_PORT,
        LOCAL_PORT,
        tcb.rcv_nxt,
        seq_add(tcb.snd_una, ack_off),
        data.draw(st.sampled_from([ACK, ACK | PSH])),
        window,
        0,
        opts,
        memoryview(bytes(range(256)) * 8)[:plen],
    )


class Tape:
    """A hypothesis ``DataObject`` that records every value drawn, so that
    ``Replay(tape.values)`` can take a second connection through the same steps: the
    machine is deterministic, so equal inputs make an equal twin. (``copy.deepcopy``
    cannot copy a ``Connection`` compiled by mypyc.)"""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data
        self.values: list[Any] = []

    def draw(self, strategy: st.SearchStrategy[Any], label: Any = None) -> Any:
        value = self._data.draw(strategy, label=label)
        self.values.append(value)
        return value


class Replay:
    """Gives back a ``Tape``'s values in order, whatever is asked for."""

    def __init__(self, values: list[Any]) -> None:
        self._values = iter(list(values))

    def draw(self, strategy: st.SearchStrategy[Any], label: Any = None) -> Any:
        return next(self._values)


def drive(data: st.DataObject, conn: Connection, now: float, steps: int) -> float:
    """Apply ``steps`` random peer segments, app calls and timer runs; drain after each.

    Returns the clock after the last step.
    """
    for _ in range(steps):
        now += data.draw(st.sampled_from([0.0, 0.001, 0.05, 0.3, 2.0]), label="dt")
        kind = data.draw(
            st.sampled_from(
                ["peer"] * 12 + ["send"] * 6 + ["recv"] * 6 + ["timer"] * 3 + ["shutdown"]
            ),
            label="step",
        )
        if kind == "peer":
            conn.on_segment(peer_segment(data, conn, now), now)
        elif kind == "send":
            if conn.state.can_send() and not conn.tcb.app_closed:
                conn.app_send(bytes(data.draw(st.integers(1, 9000))), now)
        elif kind == "recv":
            conn.app_receive(data.draw(st.integers(1, 20000)), now)
        elif kind == "timer":
            deadline = conn.next_deadline()
            if deadline is not None:
                now = max(now, deadline)
                conn.on_timer(now)
        else:
            conn.app_shutdown(now)
        yield_step(conn)
    return now


def yield_step(conn: Connection) -> Step:
    conn.check_invariants()
    return conn.drain()


def _fields(cls: type) -> tuple[str, ...] | None:
    """The attributes of a slotted class, or of a native class compiled by mypyc (which
    has no ``__slots__``; ``__mypyc_attrs__`` lists them)."""
    names = getattr(cls, "__mypyc_attrs__", None) or getattr(cls, "__slots__", None)
    if names is None:
        return None
    return tuple(n for n in names if not n.startswith("__"))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):  # NamedTuples (options) and plain tuples
        return tuple(_plain(v) for v in value)
    if isinstance(value, list | deque):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, memoryview):
        return bytes(value)
    slots = _fields(type(value))
    if slots is not None:
        return (type(value).__name__, {s: _plain(getattr(value, s)) for s in slots})
    return value


def snapshot(conn: Connection) -> dict[str, Any]:
    """Every attribute of ``conn`` (TCB, buffers, timers, RTT, cwnd, pending outputs)."""
    names = _fields(Connection)
    assert names
    return {name: _plain(getattr(conn, name)) for name in names if name != "config"}


def plain_step(step: Step) -> tuple[Any, ...]:
    """A drained step with payload views turned into bytes."""
    segs = tuple((*seg[:5], bytes(seg.payload), seg.needs_version) for seg in step.segments)
    return (step.delta, segs, step.events)
