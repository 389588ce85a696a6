"""A restored connection whose record lacks bytes the peer already has resets itself
once the peer's ACKs prove it: ``_arrive.sent_bytes_lost``.

The live connection below sent 3,000 bytes and the peer acknowledged them; the store
holds the state after the first 1,000 only -- the delta with the next 2,000 had not
landed when the process died (async durability), or the store went back to that older
state (Redis restarted from an older AOF) while the server was down. The peer's
RCV.NXT is 3,000; every ACK it sends is past anything the restored connection sent,
and without the proof it would be dropped for ever (RFC 9293 §3.10.7.4).
"""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from tcp_helpers import CONFIG, LOCAL_SEQ, REMOTE_SEQ, r, sq
from test_tcp_properties import Mirror
from test_tcp_restore import mirrored_established, restore_from

from stcp_framework.tcp._arrive import LOSS_WATCH, LOST_ACK_PROOF
from stcp_framework.tcp.events import Aborted, Closed
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, RST

RESTORED_AT = 100.0


def _restored(*, lost: int = 2000, window_tests: bool = True) -> Connection:
    """Restored from the store's view (1,000 bytes sent and stored), after the live
    connection had sent ``lost`` more that never reached the store."""
    mirror = Mirror()
    live = mirrored_established(mirror, at=0.05)
    live.app_send(b"a" * 1000, 0.1)
    mirror.apply(live, live.drain())  # stored
    live.app_send(b"b" * lost, 0.2)
    step = live.drain()  # left (async), never stored: the crash
    assert sum(len(seg.payload) for seg in step.segments) == lost
    conn = restore_from(mirror, RESTORED_AT, CONFIG, window_tests=window_tests)
    assert conn.tcb.snd_nxt == sq(LOCAL_SEQ, 1000)
    conn.drain()  # the kick: an ACK and the resend of the unacknowledged 1,000 bytes
    return conn


def _peer_acks(conn: Connection, acked: int, now: float) -> None:
    conn.on_segment(r(ack=sq(LOCAL_SEQ, acked)), now)


def test_the_peer_acknowledging_past_the_record_again_resets_the_connection() -> None:
    conn = _restored()
    _peer_acks(conn, 3000, RESTORED_AT + 0.01)  # its answer to the kick
    step = conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert [seg.flags & RST for seg in step.segments] in ([], [0])  # RFC 9293: ACK, drop
    _peer_acks(conn, 3000, RESTORED_AT + 0.01 + LOST_ACK_PROOF / 2)  # a copy: too soon
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_acks(conn, 3000, RESTORED_AT + 0.01 + LOST_ACK_PROOF)  # our resend's answer
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [(seg.seq, seg.ack, seg.flags) for seg in step.segments] == [
        (sq(LOCAL_SEQ, 3000), sq(REMOTE_SEQ, 0), RST | ACK)  # <SEQ=SEG.ACK>: in its window
    ]
    aborted = [e for e in step.events if isinstance(e, Aborted)]
    assert len(aborted) == 1 and "2000 bytes past what the store held" in aborted[0].reason
    assert any(isinstance(e, Closed) for e in step.events)
    assert conn.counters["sent_bytes_lost"] == 1


def test_an_ack_of_new_data_ends_the_watch() -> None:
    """The peer acknowledges what the restored connection resent: in step; a later ACK
    past SND.NXT (forged, or a bug of the peer's) is dropped as RFC 9293 says."""
    conn = _restored()
    _peer_acks(conn, 1000, RESTORED_AT + 0.01)
    assert not conn.sent_lost_watch
    for at in (0.02, 1.0, 2.0):
        _peer_acks(conn, 5000, RESTORED_AT + at)
        conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert conn.tcb.snd_una == sq(LOCAL_SEQ, 1000)
    assert "sent_bytes_lost" not in conn.counters


def test_a_live_connection_never_watches() -> None:
    mirror = Mirror()
    conn = mirrored_established(mirror, at=0.05)
    conn.app_send(b"a" * 1000, 0.1)
    conn.drain()
    assert not conn.sent_lost_watch
    for at in (0.2, 1.0, 2.0):
        _peer_acks(conn, 3000, at)
        conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert conn.counters["ack_too_new"] == 3


def test_an_ack_of_bytes_the_record_holds_is_taken_not_a_proof() -> None:
    """Bytes stored but never sent by this incarnation (``maybe_sent_end``): the one
    before may have sent them, and the peer's ACK of them is taken."""
    mirror = Mirror()
    live = mirrored_established(mirror, at=0.05)
    live.app_send(b"a" * 3000, 0.1)
    mirror.apply(live, live.drain())
    conn = restore_from(mirror, RESTORED_AT, CONFIG)
    conn.drain()
    _peer_acks(conn, 3000, RESTORED_AT + 0.01)
    _peer_acks(conn, 3000, RESTORED_AT + 1.0)
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert conn.tcb.snd_una == sq(LOCAL_SEQ, 3000)


def test_only_the_same_ack_again_proves() -> None:
    """The stuck peer's every ACK names its RCV.NXT: two different ones past the record
    (a forged one among them) prove nothing."""
    conn = _restored()
    _peer_acks(conn, 3000, RESTORED_AT + 0.01)
    _peer_acks(conn, 5000, RESTORED_AT + 1.0)
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_acks(conn, 5000, RESTORED_AT + 1.0 + LOST_ACK_PROOF)  # now the same again
    conn.drain()
    assert conn.tcb.state is TcpState.CLOSED


def test_strict_restores_watch_for_a_while_only() -> None:
    """Strict (no window tests): a store gone back shows as soon as the peer answers the
    restore's kick; long after, two ACKs past the record -- blind ones -- reset nothing."""
    conn = _restored(window_tests=False)
    later = RESTORED_AT + LOSS_WATCH + 1
    _peer_acks(conn, 3000, later)
    _peer_acks(conn, 3000, later + 1)
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert not conn.sent_lost_watch
    prompt = _restored(window_tests=False)
    _peer_acks(prompt, 3000, RESTORED_AT + 0.01)
    _peer_acks(prompt, 3000, RESTORED_AT + 0.01 + LOST_ACK_PROOF)
    prompt.drain()
    assert prompt.tcb.state is TcpState.CLOSED
