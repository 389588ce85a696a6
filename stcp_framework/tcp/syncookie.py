"""SYN cookies (RFC 4987 §3.6): a SYN-ACK whose ISS carries what the connection needs,
so that a listener whose SYN backlog is full still answers every SYN and keeps nothing
for it; the peer's ACK brings the connection back.

The layout is Linux's (``net/ipv4/syncookies.c``), but for where the SYN's SEG.SEQ goes::

    ISS = H1(4-tuple) + (count << 24) + ((H2(4-tuple, count, SEG.SEQ) + mss_index * 2^21) mod 2^24)

``count`` is the time in ``COOKIE_PERIOD`` steps (its low 8 bits in the ISS, all of it in
``H2``: a cookie never comes round again), ``H1``/``H2`` are keyed hashes (BLAKE2s
with the stack's secret, as the RFC 6528 ISS), and ``mss_index`` picks the largest entry
of ``MSS_TABLE`` that the peer's MSS allows. Linux adds SEG.SEQ to the sum, so only
SEG.ACK - SEG.SEQ of the returning ACK is checked: any later segment of the same
connection whose two numbers moved alike -- an echo's, which answers byte for byte --
passes too. Here a segment for no flow is common (a connection reset for a lost store
record, one forgotten after its close), and such a segment must not become a connection
that starts in the middle of a stream: SEG.SEQ goes through the hash, so only the
segment right after the SYN, SEG.SEQ = ISN + 1, can return the cookie; and the MSS index
is spread over the top bits of the low part (Linux adds it as is), so that a SEG.ACK a few
bytes past the cookie -- a server that had sent something -- does not pass as another
index. A cookie is good for ``MAX_COOKIE_AGE`` periods. The other SYN options ride in
the low bits of our SYN-ACK's TSval, which the peer echoes in TSecr (RFC 7323 §4.3):
window scale (4 bits, 15 = none) and SACK-permitted (1 bit). A peer without timestamps
gets neither: the cookie cannot carry them (Linux does the same).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from ..wire.seq import SEQ_MASK, Seq
from ._listen import DEFAULT_MSS

COOKIE_PERIOD = 64.0
"""Seconds per ``count`` step (Linux: 64 s, ``tcp_cookie_time``)."""
MAX_COOKIE_AGE = 2
"""Steps a cookie stays good: one to two periods (Linux ``MAX_SYNCOOKIE_AGE``)."""
COUNT_BITS = 8
COUNT_MASK = (1 << COUNT_BITS) - 1  # the ISS holds the period's low 8 bits; H2 all of it
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
INDEX_STRIDE = 1 << (COOKIE_BITS - 3)  # 8 MSS indexes over the 24 low bits
MSS_TABLE = (536, 1220, 1300, 1440, 1460, 8940, 16384, 64940)
"""The MSS values a cookie can name (3 bits): Linux's common Ethernet and tunnel values,
and jumbo and large-MTU ones -- a TUN device at MTU 65000 (IPv4 MSS 64960, IPv6 64940)
keeps its large segments. A peer's MSS between two entries gets the lower one."""
TS_OPTION_BITS = 6
TS_OPTION_MASK = (1 << TS_OPTION_BITS) - 1
NO_WSCALE = 0xF
SACK_BIT = 0x10


class CookieOptions(NamedTuple):
    """What a valid cookie gives back of the peer's SYN."""

    mss: int
    wscale: int | None
    sack_permitted: bool
    timestamps: bool


class SynCookies:
    """Makes and checks SYN cookies with one secret (the stack's)."""

    def __init__(self, secret: bytes) -> None:
        key = secret if len(secret) <= 32 else hashlib.blake2s(secret).digest()
        self._h1 = hashlib.blake2s(key=key, digest_size=4, person=b"stcpck1")
        self._h2 = hashlib.blake2s(key=key, digest_size=4, person=b"stcpck2")

    def _hash(
        self, proto: hashlib.blake2s, four_tuple: bytes, count: int = -1, irs: int = 0
    ) -> int:
        h = proto.copy()
        h.update(four_tuple)
        if count >= 0:
            h.update(count.to_bytes(8, "big") + irs.to_bytes(4, "big"))
        return int.from_bytes(h.digest(), "big")

    def make(
        self, now: float, four_tuple: bytes, irs: int, peer_mss: int | None
    ) -> tuple[Seq, int]:
        """The cookie ISS for a SYN with sequence number ``irs`` and MSS ``peer_mss``.

        Args:
            now: The stack's clock, in seconds.
            four_tuple: ``tuple_bytes(...)`` of the connection.
            irs: The SYN's SEG.SEQ.
            peer_mss: The MSS the SYN offered; ``None``: it sent none (536, RFC 9293).

        Returns:
            ``(iss, mss)``: the cookie, and the MSS it encodes (at most ``peer_mss``).
        """
        if peer_mss is None:
            peer_mss = DEFAULT_MSS
        index = 0
        for i, value in enumerate(MSS_TABLE):
            if value <= peer_mss:
                index = i
        period = _period(now)
        low = (self._hash(self._h2, four_tuple, period, irs) + index * INDEX_STRIDE) & COOKIE_MASK
        iss = self._hash(self._h1, four_tuple) + ((period & COUNT_MASK) << COOKIE_BITS) + low
        return Seq(iss & SEQ_MASK), MSS_TABLE[index]

    def check(self, now: float, four_tuple: bytes, irs: int, cookie: int) -> int | None:
        """The MSS a cookie encodes, or ``None`` if it is not one of ours, or too old.

        Args:
            irs: The ACK's SEG.SEQ - 1 (the SYN's sequence number).
            cookie: The ACK's SEG.ACK - 1 (our ISS).
        """
        rest = (cookie - self._hash(self._h1, four_tuple)) & SEQ_MASK
        period = _period(now)
        age = (period - (rest >> COOKIE_BITS)) & COUNT_MASK
        if age >= MAX_COOKIE_AGE:
            return None
        made = period - age  # the whole period number: a cookie never comes round again
        spread = (rest - self._hash(self._h2, four_tuple, made, irs & SEQ_MASK)) & COOKIE_MASK
        index, off = divmod(spread, INDEX_STRIDE)
        return MSS_TABLE[index] if off == 0 and index < len(MSS_TABLE) else None


def _period(now: float) -> int:
    return max(int(now // COOKIE_PERIOD), 0)


def tuple_bytes(local: bytes, local_port: int, remote: bytes, remote_port: int) -> bytes:
    """The 4-tuple as the cookie hashes see it (packed addresses, big-endian ports)."""
    return local + local_port.to_bytes(2, "big") + remote + remote_port.to_bytes(2, "big")


def tsval_at(now: float, tsval_offset: int) -> int:
    """Our TSval at ``now`` with a connection's ``tsval_offset`` (``Connection.tsval``)."""
    return (int(now * 1000) + tsval_offset) & SEQ_MASK


def cookie_tsval(tsval: int, wscale: int | None, sack_permitted: bool) -> int:
    """Our SYN-ACK's TSval with the options in its low bits: ``tsval`` rounded down, so
    that our TSvals never go back (the next segments use the clock again)."""
    options = (NO_WSCALE if wscale is None else wscale) | (SACK_BIT if sack_permitted else 0)
    value = (tsval & ~TS_OPTION_MASK) | options
    if value > tsval & SEQ_MASK:
        value -= 1 << TS_OPTION_BITS  # (from the period before: never ahead of the clock)
    return value & SEQ_MASK


def options_from_tsecr(tsecr: int) -> tuple[int | None, bool]:
    """``(wscale, sack_permitted)`` from the TSecr of the ACK that returns a cookie (a
    shift above 14 is clamped there, RFC 7323 §2.3, as from a SYN)."""
    bits = tsecr & TS_OPTION_MASK
    wscale = bits & 0xF
    return (None if wscale == NO_WSCALE else wscale), bool(bits & SACK_BIT)
