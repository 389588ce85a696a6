"""Which peers sign their segments with TCP MD5 (RFC 2385), and the check of each
arriving segment against that (``Runtime(md5_keys=...)``; ``wire/tcp_md5.py``).

The keys are configuration, not connection state: a restarted stack is given them
again, and its restored connections sign as before. Like Linux (``TCP_MD5SIG`` with a
prefix length), a key belongs to a peer address or a network of them; the longest
prefix that holds an address gives its key. The check (RFC 2385 §2.0, Linux's
``tcp_inbound_md5_hash``) drops, and counts, a segment from a peer with a key that is
unsigned (``md5_not_found``) or wrongly signed (``md5_failure``), and a signed segment
from a peer without one (``md5_unexpected``) -- SYNs and RSTs included: no one without
the key can open, reset or inject into such a connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ..errors import StcpConfigError
from ..wire.packet import tcp_header_of
from ..wire.tcp import Packet
from ..wire.tcp_md5 import MAX_KEY_LEN, md5_valid

__all__ = ["Md5Keys"]

_CACHE_MAX = 4096  # peer addresses whose key lookups are kept


class Md5Keys:
    """The MD5 keys of a stack's peers, by address or network."""

    def __init__(self, keys: Mapping[str, bytes | str]) -> None:
        """
        Args:
            keys: ``{"198.18.0.1": b"secret", "2001:db8::/64": "secret", ...}``; a
                ``str`` key is taken as its UTF-8 bytes (as BIRD's ``password``).

        Raises:
            StcpConfigError: An address or network that does not parse, or a key that
                is empty or longer than Linux accepts (80 bytes).
        """
        table: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, bytes]] = []
        for where, key in keys.items():
            try:
                network = ipaddress.ip_network(where, strict=False)
            except ValueError as exc:
                raise StcpConfigError(f"MD5 key for {where!r}: {exc}") from None
            secret = key.encode() if isinstance(key, str) else bytes(key)
            if not 0 < len(secret) <= MAX_KEY_LEN:
                raise StcpConfigError(
                    f"MD5 key for {where}: {len(secret)} bytes; use 1 to {MAX_KEY_LEN}"
                )
            table.append((network, secret))
        table.sort(key=lambda entry: -entry[0].prefixlen)  # longest prefix first
        self._table = table
        self._cache: dict[bytes, bytes | None] = {}

    def key_for(self, address: bytes) -> bytes | None:
        """The key of the peer at packed ``address``, or ``None``."""
        cache = self._cache
        if address in cache:
            return cache[address]
        ip = ipaddress.ip_address(address)
        found = next((key for network, key in self._table if ip in network), None)
        if len(cache) >= _CACHE_MAX:
            cache.clear()  # (spoofed sources must not grow it without bound)
        cache[address] = found
        return found

    def refusal(self, packet: Packet, buf: memoryview) -> str | None:
        """Why ``packet`` (read as ``buf``) must be dropped, as a counter name; ``None``
        when its signature is as its peer's key requires."""
        key = self.key_for(packet.src)
        signature = packet.tcp.options.md5
        if key is None:
            return None if signature is None else "md5_unexpected"
        if signature is None:
            return "md5_not_found"
        if not md5_valid(packet, tcp_header_of(buf), key):
            return "md5_failure"
        return None
