"""The persisted transmission control block (RFC 9293 §3.3.1, CRIU ``libsoccr_sk_data``).

``Tcb`` holds exactly what a restore needs and nothing that can be rebuilt (timers, RTT
estimator, congestion state: STYLE.md §4). It is a mutable slots record for speed; only
``Connection``'s mutators assign to it, and each assignment is mirrored into the pending
``TcbSet`` of the next delta, so the store always sees what the machine sees.

Record encoding (``to_record``/``from_record`` and ``TcbSet.fields``): plain ``int``,
``bool`` and ``str`` values; ``state`` is the RFC spelling (``"ESTABLISHED"``).
"""

from __future__ import annotations

from typing import Any

from ..wire.seq import Seq
from .state import TcpState

SCHEMA_VERSION = 1
"""Bumped whenever a field changes meaning; ``from_record`` refuses newer schemas."""

TCB_FIELDS: tuple[str, ...] = (
    "state",
    "iss",
    "irs",
    "snd_una",
    "snd_nxt",
    "snd_wnd",
    "snd_wl1",
    "snd_wl2",
    "max_window",
    "rcv_nxt",
    "rcv_wnd",
    "rcv_wup",
    "mss",
    "snd_wscale",
    "rcv_wscale",
    "timestamps",
    "tsval_offset",
    "ts_recent",
    "sack_permitted",
    "fin_sent",
    "fin_received",
    "snd_una_offset",
    "rcv_nxt_offset",
    "read_offset",
    "commit_offset",
    "app_closed",
    "manual_commit",
    "ack_on_commit",
    "tx_refs",
    "tx_ref_base",
    "active_open",
)
_DEFAULTS: dict[str, Any] = {
    "ack_on_commit": False,
    "tx_refs": "",
    "tx_ref_base": 0,
    "active_open": False,
}
"""Fields added after schema 1, with the value older records mean."""


class Tcb:
    """The persisted record of one connection.

    Attributes:
        state: RFC 9293 state.
        iss, irs: Initial send / receive sequence numbers (the SYNs' seqs).
        snd_una: Oldest unacknowledged seq.
        snd_nxt: Highest seq sent so far + 1 (BSD ``snd_max``): after an RTO the machine
            resends from ``snd_una`` with a runtime pointer, and ``snd_nxt`` never moves
            back, so an ACK of anything ever sent stays acceptable after a restore.
            ``snd_nxt - snd_una`` == bytes in flight (+1 while SYN or FIN unacked).
        snd_wnd: Peer's window in bytes (already scaled); ``snd_wl1``/``snd_wl2``: seq
            and ack of the segment that last updated it (RFC 9293 §3.10.7.4 step 5).
        max_window: Largest ``snd_wnd`` seen (RFC 5961 §5, sender SWS avoidance).
        rcv_nxt: Next seq expected. ``rcv_wnd``: window advertised in the last segment
            sent, in bytes; ``rcv_wup``: ``rcv_nxt`` at that moment, so the advertised
            right edge is ``rcv_wup + rcv_wnd`` and never moves left (RFC 7323 §2.4).
        mss: Effective send MSS: payload bytes per segment, option bytes deducted.
        snd_wscale, rcv_wscale: Window shift counts (RFC 7323 §2), 0 if not negotiated.
        timestamps: RFC 7323 timestamps negotiated.
        tsval_offset: Our timestamp clock base: ``tsval = int(now*1000) + tsval_offset``.
        ts_recent: Latest peer TSval to echo (RFC 7323 §4.3).
        sack_permitted: Both ends sent SACK-permitted (RFC 2018 §2): ``tcp/sack.py``.
        fin_sent, fin_received: A FIN was transmitted / accepted in order.
        snd_una_offset: Stream offset of ``snd_una`` (-1 while the SYN is unacknowledged;
            data length + 1 once our FIN is acknowledged).
        rcv_nxt_offset: Stream offset of ``rcv_nxt`` (data length + 1 after the FIN).
        read_offset: Inbound bytes the app has read, as persisted: with level-2 commits
            only the commit point is persisted, so it equals ``commit_offset`` (reading
            resumes there after a restore). ``commit_offset``: app committed.
        app_closed: The app called ``close()``: inbound data from now on gets a RST.
        manual_commit: Level 2: bytes stay stored until ``app_commit`` (replay).
        ack_on_commit: ACKs cover committed bytes only (``TcpConfig.ack_on_commit``):
            received bytes are never stored; ``rcv_nxt`` as persisted may run ahead of
            the commit point, and ``Connection.restore`` moves it back there.
        tx_refs, tx_ref_base: Regenerable sends (``txmap.TxMap``): the source extents of
            the unacknowledged send stream, and the ref bytes before them.
        active_open: We sent the first SYN (``connect``): a restored stream of it goes
            back to the app by ``Stack.reattach`` only, never to a listener.
    """

    __slots__ = TCB_FIELDS

    state: TcpState
    iss: Seq
    irs: Seq
    snd_una: Seq
    snd_nxt: Seq
    snd_wnd: int
    snd_wl1: Seq
    snd_wl2: Seq
    max_window: int
    rcv_nxt: Seq
    rcv_wnd: int
    rcv_wup: Seq
    mss: int
    snd_wscale: int
    rcv_wscale: int
    timestamps: bool
    tsval_offset: int
    ts_recent: int
    sack_permitted: bool
    fin_sent: bool
    fin_received: bool
    snd_una_offset: int
    rcv_nxt_offset: int
    read_offset: int
    commit_offset: int
    app_closed: bool
    manual_commit: bool
    ack_on_commit: bool
    tx_refs: str
    tx_ref_base: int
    active_open: bool

    def __init__(self, *, iss: Seq, tsval_offset: int, mss: int) -> None:
        self.state = TcpState.CLOSED
        self.iss = iss
        self.irs = Seq(0)
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_wnd = 0
        self.snd_wl1 = Seq(0)
        self.snd_wl2 = Seq(0)
        self.max_window = 0
        self.rcv_nxt = Seq(0)
        self.rcv_wnd = 0
        self.rcv_wup = Seq(0)
        self.mss = mss
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.timestamps = False
        self.tsval_offset = tsval_offset
        self.ts_recent = 0
        self.sack_permitted = False
        self.fin_sent = False
        self.fin_received = False
        self.snd_una_offset = -1
        self.rcv_nxt_offset = -1
        self.read_offset = 0
        self.commit_offset = 0
        self.manual_commit = False
        self.ack_on_commit = False
        self.tx_refs = ""
        self.tx_ref_base = 0
        self.app_closed = False
        self.active_open = False

    def to_record(self) -> dict[str, Any]:
        """Every field as plain values (``TCB_FIELDS`` order), plus ``"schema"``.

        Spelled out field by field: compiled, each read is a native slot read, where
        ``operator.attrgetter`` does a generic lookup per field (5.5 -> 2.1 us; every
        passive open records the whole TCB as its first delta). A test keeps it in step
        with ``TCB_FIELDS``."""
        return {
            "state": self.state._value_,  # (``.value`` is a property)
            "iss": self.iss,
            "irs": self.irs,
            "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt,
            "snd_wnd": self.snd_wnd,
            "snd_wl1": self.snd_wl1,
            "snd_wl2": self.snd_wl2,
            "max_window": self.max_window,
            "rcv_nxt": self.rcv_nxt,
            "rcv_wnd": self.rcv_wnd,
            "rcv_wup": self.rcv_wup,
            "mss": self.mss,
            "snd_wscale": self.snd_wscale,
            "rcv_wscale": self.rcv_wscale,
            "timestamps": self.timestamps,
            "tsval_offset": self.tsval_offset,
            "ts_recent": self.ts_recent,
            "sack_permitted": self.sack_permitted,
            "fin_sent": self.fin_sent,
            "fin_received": self.fin_received,
            "snd_una_offset": self.snd_una_offset,
            "rcv_nxt_offset": self.rcv_nxt_offset,
            "read_offset": self.read_offset,
            "commit_offset": self.commit_offset,
            "app_closed": self.app_closed,
            "manual_commit": self.manual_commit,
            "ack_on_commit": self.ack_on_commit,
            "tx_refs": self.tx_refs,
            "tx_ref_base": self.tx_ref_base,
            "active_open": self.active_open,
            "schema": SCHEMA_VERSION,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Tcb:
        """Inverse of ``to_record``.

        Raises:
            ValueError: The record was written by a newer schema, or misses a field.
        """
        schema = int(rec.get("schema", SCHEMA_VERSION))
        if schema > SCHEMA_VERSION:
            raise ValueError(f"TCB schema {schema} is newer than {SCHEMA_VERSION}")
        missing = [name for name in TCB_FIELDS if name not in rec and name not in _DEFAULTS]
        if missing:
            raise ValueError(f"TCB record misses {', '.join(missing)}")
        tcb = cls(iss=Seq(int(rec["iss"])), tsval_offset=0, mss=0)
        for name in TCB_FIELDS:
            value = rec[name] if name in rec else _DEFAULTS[name]
            if name == "state":
                value = TcpState(value)
            setattr(tcb, name, value)
        return tcb

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tcb):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in TCB_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in TCB_FIELDS)
        return f"Tcb({inner})"
