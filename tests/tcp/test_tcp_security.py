"""RFC 5961 (blind RST/SYN/data injection), RFC 7323 PAWS, and RFC 6528 ISS."""

from __future__ import annotations

from dataclasses import replace

from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    REMOTE_SEQ,
    conn_established,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    syn_options,
)

from stcp_framework.tcp.delta import RxAppend
from stcp_framework.tcp.events import Closed, Reset
from stcp_framework.tcp.isn import iss_rfc6528
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import RST, SYN, TcpOptions


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    conn = conn_established()
    send(conn, r(flags=RST), at=1.0)
    step = expect_nothing(conn)
    assert step.events == (Reset(), Closed())
    assert step.delta is not None and step.delta.ops[-1].fields["state"] == "CLOSED"  # type: ignore[union-attr]


def test_rst_in_window_but_not_exact_gets_challenge_ack() -> None:
    conn = conn_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), flags=RST), at=1.0)
    expect(conn, [s()])  # RFC 5961 §3.2
    assert conn.state is TcpState.ESTABLISHED


def test_rst_out_of_window_is_ignored_silently() -> None:
    conn = conn_established()
    send(conn, r(seq=sq(REMOTE_SEQ, BUF + 10), flags=RST), at=1.0)
    expect_nothing(conn)
    send(conn, r(seq=sq(REMOTE_SEQ, -1), flags=RST), at=1.0)
    expect_nothing(conn)
    assert conn.state is TcpState.ESTABLISHED


def test_challenge_acks_are_rate_limited() -> None:
    conn = conn_established(replace(CONFIG, challenge_ack_limit=2))
    for _ in range(5):
        send(conn, r(seq=sq(REMOTE_SEQ, 100), flags=RST), at=1.0)
    expect(conn, [s(), s()])
    send(conn, r(seq=sq(REMOTE_SEQ, 100), flags=RST), at=2.0)  # a new interval
    expect(conn, [s()])


def test_syn_in_established_gets_challenge_ack() -> None:
    conn = conn_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 5), ack=0, flags=SYN, options=syn_options()), at=1.0)
    expect(conn, [s()])  # RFC 5961 §4.2
    send(conn, r(seq=sq(REMOTE_SEQ, 50000), ack=0, flags=SYN), at=1.0)
    expect(conn, [s()])
    assert conn.state is TcpState.ESTABLISHED


def test_ack_of_unsent_data_is_acked_and_dropped() -> None:
    conn = conn_established()
    send(conn, r(ack=sq(LOCAL_SEQ, 10), payload=b"inject"), at=1.0)
    step = expect(conn, [s()])
    assert step.delta is None or not any(isinstance(op, RxAppend) for op in step.delta.ops)
    assert conn.recv_available == 0


def test_acks_to_unacceptable_acks_are_rate_limited() -> None:
    """An unacceptable segment without data (out of window, or ACKing unsent data) is
    answered once per 500 ms at most (Linux tcp_oow_rate_limited): two ends that each
    find the other's ACKs unacceptable would answer each other for ever, and every
    duplicate the network adds would start one more such exchange (seen as an ACK war
    of ~100 segments per millisecond in a randomized crash sweep). Data is always
    answered: it is not part of such a loop."""
    conn = conn_established()
    for _ in range(3):
        send(conn, r(seq=sq(REMOTE_SEQ, -5000)), at=1.0)  # old: out of window
        send(conn, r(ack=sq(LOCAL_SEQ, 10)), at=1.0)  # of unsent data
    expect(conn, [s()])
    assert conn.counters["invalid_ack_suppressed"] == 5
    send(conn, r(ack=sq(LOCAL_SEQ, 10)), at=1.4)
    expect_nothing(conn)
    send(conn, r(ack=sq(LOCAL_SEQ, 10)), at=1.5)  # 500 ms on
    expect(conn, [s()])
    for _ in range(2):
        send(conn, r(seq=sq(REMOTE_SEQ, -5000), payload=b"old data"), at=1.6)
        expect(conn, [s()])


def test_ack_older_than_max_window_is_dropped_with_challenge() -> None:
    conn = conn_established()
    send(conn, r(ack=sq(LOCAL_SEQ, -70000), payload=b"inject"), at=1.0)
    expect(conn, [s()])  # RFC 5961 §5.2
    assert conn.recv_available == 0
    # Old but within max_window: acceptable (a duplicate ACK), data taken.
    send(conn, r(ack=sq(LOCAL_SEQ, -100), payload=b"fine"), at=1.0)
    conn.drain()
    assert conn.recv_available == 4


def ts_conn() -> Connection:
    config = replace(CONFIG, timestamps=True)
    return conn_established(config, options=syn_options(ts=(1000, 0)))


def test_timestamps_echo_and_ts_recent() -> None:
    conn = ts_conn()
    send(conn, r(payload=b"a", options=TcpOptions(timestamps=(1010, 5))), at=1.0)
    assert conn.tcb.ts_recent == 1010
    (ack,) = expect(
        conn,
        [s(ack=sq(REMOTE_SEQ, 1), window=BUF - 1, options=TcpOptions(timestamps=(1040, 1010)))],
        at=1.04,
    ).segments
    assert ack.options.timestamps == (1040, 1010)


def test_paws_drops_old_timestamp() -> None:
    conn = ts_conn()
    send(conn, r(payload=b"new", options=TcpOptions(timestamps=(2000, 5))), at=1.0)
    conn.drain()
    # A segment with an older TSval (a wrapped old duplicate) is dropped and ACKed.
    send(
        conn,
        r(seq=sq(REMOTE_SEQ, 3), payload=b"old", options=TcpOptions(timestamps=(1500, 5))),
        at=1.01,
    )
    step = expect(
        conn,
        [s(ack=sq(REMOTE_SEQ, 3), window=BUF - 3, options=TcpOptions(timestamps=(1010, 2000)))],
    )
    assert step.delta is None or not any(isinstance(op, RxAppend) for op in step.delta.ops)
    assert conn.counters["paws_drop"] == 1
    # RST is exempt from PAWS (RFC 7323 §5.3).
    send(conn, r(seq=sq(REMOTE_SEQ, 3), flags=RST, options=TcpOptions(timestamps=(1, 5))), at=1.02)
    assert conn.state is TcpState.CLOSED


def test_iss_rfc6528() -> None:
    a = b"\xc6\x12\x00\x01"
    b = b"\xc6\x12\x00\x02"
    secret = b"k" * 16
    iss1 = iss_rfc6528(1.0, a, 80, b, 40000, secret)
    assert iss1 == iss_rfc6528(1.0, a, 80, b, 40000, secret)  # deterministic
    assert iss1 != iss_rfc6528(1.0, a, 80, b, 40001, secret)  # per 4-tuple
    assert iss1 != iss_rfc6528(1.0, a, 80, b, 40000, b"other")  # keyed
    # M advances with a 4 µs clock.
    assert (iss_rfc6528(2.0, a, 80, b, 40000, secret) - iss1) % 2**32 == 250_000
    assert 0 <= iss_rfc6528(1e6, a, 80, b, 40000, b"x" * 64) < 2**32


def test_syns_that_fail_paws_get_rate_limited_challenge_acks() -> None:
    """RFC 5961 §7 and RFC 7323: a SYN in a synchronized state gets a challenge ACK,
    within the rate limit -- also when its old TSval fails PAWS (Linux's syn_challenge).
    It got an ACK each, past the limit."""
    conn = ts_conn()
    send(conn, r(payload=b"new", options=TcpOptions(timestamps=(2000, 5))), at=1.0)
    conn.drain()
    for _ in range(50):
        send(
            conn,
            r(seq=sq(REMOTE_SEQ, 3), ack=0, flags=SYN, options=TcpOptions(timestamps=(1500, 5))),
            at=1.01,
        )
    assert len(conn.drain().segments) == CONFIG.challenge_ack_limit
    assert conn.counters["paws_drop"] == 50
    assert conn.state is TcpState.ESTABLISHED
