"""Initial sequence numbers (RFC 6528 §3).

``ISN = M + F(localip, localport, remoteip, remoteport, secretkey)`` where ``M`` is a
4-microsecond timer and ``F`` a keyed pseudo-random function; we use BLAKE2s keyed with
the stack's secret (RFC 6528 recommends a keyed hash; MD5 is only an example).
"""

from __future__ import annotations

import hashlib

from ..wire.seq import SEQ_MASK, Seq

ISN_CLOCK_HZ = 250_000  # RFC 6528 §3 / RFC 9293 §3.4.1: a 4 µs clock


def iss_rfc6528(
    now: float,
    local_addr: bytes,
    local_port: int,
    remote_addr: bytes,
    remote_port: int,
    secret: bytes,
) -> Seq:
    """The ISS for a connection of this 4-tuple at time ``now`` (seconds).

    Args:
        now: The stack's clock; only its 4 µs ticks matter.
        local_addr, remote_addr: Packed IPv4 (4 bytes) or IPv6 (16 bytes) addresses.
        local_port, remote_port: Ports.
        secret: The stack's secret key (any length; longer than 32 bytes is hashed).
    """
    return IssGenerator(secret)(now, local_addr, local_port, remote_addr, remote_port)


class IssGenerator:
    """``iss_rfc6528`` with the secret bound: the keyed hash is set up once, and each
    ISS hashes a copy of it (a third of the cost of keying BLAKE2s at every SYN)."""

    def __init__(self, secret: bytes) -> None:
        key = secret if len(secret) <= 32 else hashlib.blake2s(secret).digest()
        self._keyed = hashlib.blake2s(key=key, digest_size=4)

    def __call__(
        self,
        now: float,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
    ) -> Seq:
        h = self._keyed.copy()
        h.update(local_addr)
        h.update(local_port.to_bytes(2, "big"))
        h.update(remote_addr)
        h.update(remote_port.to_bytes(2, "big"))
        m = int(now * ISN_CLOCK_HZ)
        return Seq((m + int.from_bytes(h.digest(), "big")) & SEQ_MASK)
