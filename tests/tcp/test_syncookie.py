"""SYN cookies (RFC 4987 §3.6, Linux's layout): ``tcp/syncookie.py`` and
``Connection.from_syn_cookie``."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tcp_helpers import CONFIG, LOCAL_SEQ, REMOTE_ISS, REMOTE_SEQ, r, sq, syn_options

from stcp_framework.tcp.events import Connected, DataReadable
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.syncookie import (
    COOKIE_PERIOD,
    MSS_TABLE,
    SynCookies,
    cookie_tsval,
    options_from_tsecr,
    tuple_bytes,
)
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.tcp import ACK, SYN, TcpOptions

FOUR = tuple_bytes(bytes([198, 18, 0, 2]), 7, bytes([198, 18, 0, 1]), 40000)
OTHER = tuple_bytes(bytes([198, 18, 0, 2]), 7, bytes([198, 18, 0, 1]), 40001)
NOW = 1000.0
IRS = 123456789
COOKIES = SynCookies(b"the stack's secret")
FULL = replace(CONFIG, timestamps=True, window_scaling=True, sack=True)


@pytest.mark.parametrize(
    ("peer_mss", "mss"),
    [(None, 536), (536, 536), (1000, 536), (1460, 1460), (1500, 1460), (8960, 8940),
     (64960, 64940), (65535, 64940)],
)  # fmt: skip
def test_the_cookie_names_the_largest_mss_the_peer_allows(peer_mss: int | None, mss: int) -> None:
    iss, encoded = COOKIES.make(NOW, FOUR, IRS, peer_mss)
    assert encoded == mss
    assert COOKIES.check(NOW, FOUR, IRS, iss) == mss


def test_a_cookie_is_good_for_one_to_two_periods() -> None:
    start = 64 * COOKIE_PERIOD  # the start of a period
    iss, mss = COOKIES.make(start, FOUR, IRS, 1460)
    assert COOKIES.check(start + COOKIE_PERIOD - 0.001, FOUR, IRS, iss) == mss
    assert COOKIES.check(start + 2 * COOKIE_PERIOD - 0.001, FOUR, IRS, iss) == mss
    assert COOKIES.check(start + 2 * COOKIE_PERIOD, FOUR, IRS, iss) is None
    late, _ = COOKIES.make(start + COOKIE_PERIOD - 0.001, FOUR, IRS, 1460)
    assert COOKIES.check(start + COOKIE_PERIOD, FOUR, IRS, late) == mss  # just made


def test_a_cookie_is_bound_to_its_connection_and_secret() -> None:
    iss, _ = COOKIES.make(NOW, FOUR, IRS, 1460)
    assert COOKIES.check(NOW, OTHER, IRS, iss) is None
    assert COOKIES.check(NOW, FOUR, IRS + 1000, iss) is None
    assert COOKIES.check(NOW, FOUR, IRS, (iss + 1000) % 2**32) is None
    assert SynCookies(b"another secret").check(NOW, FOUR, IRS, iss) is None


def test_a_later_segment_of_the_connection_does_not_return_the_cookie() -> None:
    """Linux adds SEG.SEQ to the cookie: then SEG.ACK - 1 and SEG.SEQ - 1 of any segment
    whose numbers both moved by the same count pass -- an echo connection's, which
    answers byte for byte, when its flow is gone (reset, forgotten). Here SEG.SEQ is
    hashed: only the segment right after the SYN returns the cookie."""
    iss, _ = COOKIES.make(NOW, FOUR, IRS, 1460)
    for moved in (1, 4, 100, 65536):
        assert COOKIES.check(NOW, FOUR, IRS + moved, (iss + moved) % 2**32) is None
        assert COOKIES.check(NOW, FOUR, IRS, (iss + moved) % 2**32) is None


def test_cookies_of_different_connections_differ() -> None:
    isses = {COOKIES.make(NOW, FOUR[:-2] + port.to_bytes(2, "big"), IRS, 1460)[0]
             for port in range(1000, 1100)}  # fmt: skip
    assert len(isses) == 100


@pytest.mark.parametrize(("wscale", "sack"), [(None, False), (7, True), (0, True), (14, False)])
def test_the_options_ride_in_the_low_bits_of_tsval(wscale: int | None, sack: bool) -> None:
    for clock in (0, 63, 64, 100_000, 2**32 - 1):
        tsval = cookie_tsval(clock, wscale, sack)
        assert 0 <= (clock - tsval) % 2**32 < 128  # never ahead of the clock
        assert options_from_tsecr(tsval) == (wscale, sack)


def _cookie_connection(payload: bytes = b"") -> Connection:
    """What the stack builds from the peer's ACK of a cookie SYN-ACK."""
    iss = sq(LOCAL_SEQ, -1)
    tsval_ours = 5000
    syn = r(
        seq=REMOTE_ISS,
        ack=0,
        flags=SYN,
        payload=b"",
        options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(777, 0)),
    )
    ack = r(seq=REMOTE_SEQ, ack=LOCAL_SEQ, flags=ACK, payload=payload,
            options=TcpOptions(timestamps=(777, tsval_ours)))  # fmt: skip
    return Connection.from_syn_cookie(
        syn, ack, now=1.0, config=FULL, iss=iss, tsval_offset=tsval_ours - 1000
    )


def test_the_ack_of_a_cookie_establishes_the_connection_the_syn_would_have() -> None:
    conn = _cookie_connection(b"hello")
    tcb = conn.tcb
    assert tcb.state is TcpState.ESTABLISHED
    assert (tcb.snd_wscale, tcb.sack_permitted, tcb.timestamps) == (7, True, True)
    assert tcb.mss == 1460 - 12  # the cookie's MSS, less the timestamp option
    assert tcb.ts_recent == 777
    assert conn.tsval(1.0) == 5000  # our clock goes on from the SYN-ACK's TSval
    step = conn.drain()
    assert all(not seg.flags & SYN for seg in step.segments)  # no second SYN-ACK
    assert step.delta is not None and step.delta.version == 1
    record = Tcb.from_record(conn.tcb.to_record())
    assert record.state is TcpState.ESTABLISHED and record.iss == sq(LOCAL_SEQ, -1)
    assert any(isinstance(e, Connected) for e in step.events)
    assert any(isinstance(e, DataReadable) for e in step.events)
    assert conn.app_receive(10, 1.0) == b"hello"


def test_an_ack_that_does_not_acknowledge_the_cookie_leaves_it_half_open() -> None:
    syn = r(seq=REMOTE_ISS, ack=0, flags=SYN, options=syn_options())
    ack = r(seq=REMOTE_SEQ, ack=sq(LOCAL_SEQ, 5), flags=ACK)
    conn = Connection.from_syn_cookie(
        syn, ack, now=1.0, config=CONFIG, iss=sq(LOCAL_SEQ, -1), tsval_offset=0
    )
    assert conn.tcb.state is TcpState.SYN_RECEIVED


def test_the_table_is_sorted_and_fits_three_bits() -> None:
    assert list(MSS_TABLE) == sorted(MSS_TABLE) and len(MSS_TABLE) <= 8


def test_a_cookie_never_comes_round_again() -> None:
    """The ISS holds the period's low 8 bits only; the hash takes all of it, so the
    cookie of a SYN does not return 256 periods (4.5 hours) later, when a captured
    first segment could otherwise be replayed as a new connection."""
    start = 300 * COOKIE_PERIOD
    iss, _ = COOKIES.make(start, FOUR, IRS, 1460)
    assert COOKIES.check(start + 256 * COOKIE_PERIOD, FOUR, IRS, iss) is None
    again, _ = COOKIES.make(start + 256 * COOKIE_PERIOD, FOUR, IRS, 1460)
    assert again != iss


def test_a_cookie_connection_has_no_rtt_sample_from_its_syn_ack() -> None:
    """Our clock was set to the SYN-ACK's TSval, so the ACK's TSecr would give an RTT of
    0 and pin the RTO to its minimum; the estimator starts afresh."""
    conn = _cookie_connection()
    assert conn.rtt.srtt is None
    assert conn.rtt.rto == FULL.initial_rto
