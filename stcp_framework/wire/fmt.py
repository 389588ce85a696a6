"""One-line, tcpdump-style descriptions of segments and packets, for TRACE logs and tests.

Format (close to ``tcpdump -S -n``, absolute sequence numbers)::

    198.18.0.2:80 > 198.18.0.1:51234 S. 1000:1000(0) ack 1 win 64240
        <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>
    [2001:db8::2]:80 > [2001:db8::1]:51234 P. 1001:2001(1000) ack 11 win 502
        <nop,nop,TS val 2 ecr 7>

(each on one line).

Flags are tcpdump's letters (``S`` SYN, ``F`` FIN, ``R`` RST, ``P`` PSH, ``U`` URG,
``E`` ECE, ``W`` CWR) followed by ``.`` when ACK is set. ``seq:end(len)`` counts
payload bytes only. Options are shown in the order ``emit_options`` writes them
(Linux order), NOPs included, so a segment we built prints exactly as on the wire.
"""

from __future__ import annotations

import ipaddress

from .options import emit_options
from .tcp import ACK, URG, Packet, TcpSegment

_FLAG_LETTERS = (
    (0x02, "S"),
    (0x01, "F"),
    (0x04, "R"),
    (0x08, "P"),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
)


def format_flags(flags: int) -> str:
    """tcpdump's flag letters: ``S.`` for SYN+ACK, ``.`` for a bare ACK, ``none`` for none."""
    out = "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)
    if flags & ACK:
        out += "."
    return out or "none"


def _format_options(seg: TcpSegment) -> str:
    raw = emit_options(seg.options)
    parts: list[str] = []
    i = 0
    while i < len(raw):  # our own, well-formed bytes
        kind = raw[i]
        if kind == 1:
            parts.append("nop")
            i += 1
            continue
        length = raw[i + 1]
        body = raw[i + 2 : i + length]
        if kind == 2:
            parts.append(f"mss {int.from_bytes(body, 'big')}")
        elif kind == 3:
            parts.append(f"wscale {body[0]}")
        elif kind == 4:
            parts.append("sackOK")
        elif kind == 8:
            parts.append(
                f"TS val {int.from_bytes(body[:4], 'big')} ecr {int.from_bytes(body[4:], 'big')}"
            )
        elif kind == 5:
            blocks = "".join(
                f"{{{int.from_bytes(body[j : j + 4], 'big')}:"
                f"{int.from_bytes(body[j + 4 : j + 8], 'big')}}}"
                for j in range(0, len(body), 8)
            )
            parts.append(f"sack {len(body) // 8} {blocks}")
        elif kind == 19:
            parts.append(f"md5 {body.hex()}")
        i += length
    return ",".join(parts)


def format_segment(seg: TcpSegment) -> str:
    """Describe a TCP segment in one line (no addresses).

    Args:
        seg: The segment.

    Returns:
        E.g. ``S 1000:1000(0) win 64240 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>``.
    """
    n = len(seg.payload)
    text = f"{format_flags(seg.flags)} {seg.seq}:{(seg.seq + n) & 0xFFFFFFFF}({n})"
    if seg.flags & ACK:
        text += f" ack {seg.ack}"
    text += f" win {seg.window}"
    if seg.flags & URG:
        text += f" urg {seg.urgent}"
    opts = _format_options(seg)
    if opts:
        text += f" <{opts}>"
    return text


def endpoint_text(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_address(addr: bytes, port: int) -> str:
    """``198.18.0.1:80`` or ``[2001:db8::1]:80`` from a packed address and a port."""
    return endpoint_text(str(ipaddress.ip_address(addr)), port)


def format_packet(pkt: Packet) -> str:
    """Describe a packet in one line: ``src:port > dst:port`` then ``format_segment``."""
    seg = pkt.tcp
    return (
        f"{format_address(pkt.src, seg.src_port)} > {format_address(pkt.dst, seg.dst_port)} "
        f"{format_segment(seg)}"
    )
