"""smoltcp-style helpers for machine tests (STYLE.md §9.2).

``RECV_TMPL`` is a segment *from the peer* (what the connection receives);
``SEND_TMPL`` is an ``OutSegment`` the connection is expected to send.
"""

from __future__ import annotations

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection, Regenerate
from stcp_framework.tcp.step import OutSegment, Step
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.seq import Seq, seq_add
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, PSH, SYN, TcpOptions, TcpSegment

LOCAL_PORT = 80
REMOTE_PORT = 49500
LOCAL_ISS = Seq(2**32 - 1000)  # data crosses the 2**32 wrap after 999 bytes
REMOTE_ISS = Seq(2**32 - 500)
LOCAL_SEQ = seq_add(LOCAL_ISS, 1)  # first data byte we send
REMOTE_SEQ = seq_add(REMOTE_ISS, 1)  # first data byte the peer sends
REMOTE_WIN = 64000
MSS = 1460
BUF = 16384

CONFIG = TcpConfig(
    mss=MSS,
    recv_buffer_size=BUF,
    send_buffer_size=65536,
    timestamps=False,
    window_scaling=False,
    sack=False,  # test_tcp_sack.py turns it on
)

RECV_TMPL = TcpSegment(
    src_port=REMOTE_PORT,
    dst_port=LOCAL_PORT,
    seq=REMOTE_SEQ,
    ack=LOCAL_SEQ,
    flags=ACK,
    window=REMOTE_WIN,
    urgent=0,
    options=NO_OPTIONS,
    payload=b"",
)
SEND_TMPL = OutSegment(
    seq=LOCAL_SEQ,
    ack=REMOTE_SEQ,
    flags=ACK,
    window=BUF,
    options=NO_OPTIONS,
    payload=b"",
    needs_version=0,
)


def r(**kw: object) -> TcpSegment:
    """A segment from the peer: ``RECV_TMPL`` with fields replaced."""
    return RECV_TMPL._replace(**kw)  # type: ignore[arg-type]


def s(**kw: object) -> OutSegment:
    """An expected segment: ``SEND_TMPL`` with fields replaced."""
    fields = {
        "seq": SEND_TMPL.seq,
        "ack": SEND_TMPL.ack,
        "flags": SEND_TMPL.flags,
        "window": SEND_TMPL.window,
        "options": SEND_TMPL.options,
        "payload": SEND_TMPL.payload,
        "needs_version": SEND_TMPL.needs_version,
    }
    fields.update(kw)
    return OutSegment(**fields)  # type: ignore[arg-type]


def sq(base: int, n: int) -> Seq:
    return seq_add(Seq(base), n)


def _norm(seg: OutSegment, psh: bool) -> tuple[object, ...]:
    flags = seg.flags if psh else seg.flags & ~PSH
    return (seg.seq, seg.ack, flags, seg.window, seg.options, bytes(seg.payload), seg.gso_size)


def send(conn: Connection, seg: TcpSegment, *, at: float) -> None:
    conn.on_segment(seg, at)
    conn.check_invariants()


def expect(
    conn: Connection, segs: list[OutSegment], *, at: float | None = None, psh: bool = False
) -> Step:
    """Fire timers due at ``at`` (if given), drain, and require exactly ``segs``."""
    if at is not None:
        deadline = conn.next_deadline()
        if deadline is not None and deadline <= at:
            conn.on_timer(at)
    step = conn.drain()
    got = [_norm(x, psh) for x in step.segments]
    want = [_norm(x, psh) for x in segs]
    assert got == want, f"\n got: {step.segments}\nwant: {segs}"
    conn.check_invariants()
    return step


def expect_nothing(conn: Connection, *, at: float | None = None) -> Step:
    return expect(conn, [], at=at)


def tcb_fields(step: Step) -> dict[str, object]:
    """The merged TcbSet fields of a step's delta."""
    from stcp_framework.tcp.delta import TcbSet

    out: dict[str, object] = {}
    if step.delta is not None:
        for op in step.delta.ops:
            if isinstance(op, TcbSet):
                out.update(op.fields)
    return out


def syn_options(
    mss: int | None = MSS, wscale: int | None = None, ts: tuple[int, int] | None = None
) -> TcpOptions:
    return TcpOptions(mss=mss, wscale=wscale, timestamps=ts)


# ---------------------------------------------------------------- state fixtures


def conn_syn_sent(config: TcpConfig = CONFIG) -> Connection:
    conn = Connection.open_active(now=0.0, config=config, iss=LOCAL_ISS, tsval_offset=0)
    conn.drain()
    return conn


def conn_syn_received(config: TcpConfig = CONFIG, options: TcpOptions | None = None) -> Connection:
    syn = r(seq=REMOTE_ISS, ack=0, flags=SYN, options=options or syn_options())
    conn = Connection.open_passive(syn, now=0.0, config=config, iss=LOCAL_ISS, tsval_offset=0)
    conn.drain()
    return conn


def conn_established(config: TcpConfig = CONFIG, options: TcpOptions | None = None) -> Connection:
    conn = conn_syn_received(config, options)
    ack_opts = NO_OPTIONS
    if options is not None and options.timestamps is not None and config.timestamps:
        ack_opts = TcpOptions(timestamps=(options.timestamps[0], 0))
    conn.on_segment(r(options=ack_opts), 0.0)
    conn.drain()
    return conn


def conn_fin_wait_1() -> Connection:
    conn = conn_established()
    conn.app_shutdown(0.0)
    conn.drain()
    return conn


def conn_fin_wait_2() -> Connection:
    conn = conn_fin_wait_1()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1)), 0.0)
    conn.drain()
    return conn


def conn_closing() -> Connection:
    conn = conn_fin_wait_1()
    conn.on_segment(r(flags=ACK | 1), 0.0)  # FIN, not acking ours
    conn.drain()
    return conn


def conn_time_wait() -> Connection:
    conn = conn_fin_wait_2()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1), flags=ACK | 1), 0.0)
    conn.drain()
    return conn


def conn_close_wait() -> Connection:
    conn = conn_established()
    conn.on_segment(r(flags=ACK | 1), 0.0)
    conn.drain()
    return conn


def conn_last_ack() -> Connection:
    conn = conn_close_wait()
    conn.app_shutdown(0.0)
    conn.drain()
    return conn


def restore_record(
    record: dict[str, object],
    conn: Connection,
    *,
    rx: bytes = b"",
    rx_offset: int = 0,
    tx: bytes = b"",
    tx_offset: int = 0,
    now: float = 5.0,
    regenerate: Regenerate | None = None,
) -> Connection:
    """``Connection.restore`` of a stored ``record`` of ``conn`` (its config and delta
    version), with the stored buffers given (none by default)."""
    return Connection.restore(
        Tcb.from_record(record),
        rx=rx,
        rx_offset=rx_offset,
        tx=tx,
        tx_offset=tx_offset,
        now=now,
        config=conn.config,
        version=conn.version,
        regenerate=regenerate,
    )
