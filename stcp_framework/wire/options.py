"""TCP options: tolerant parsing and aligned emission.

Parsing (RFC 9293 §3.1 "Options", §3.2): kinds 0 (End of Option List) and 1 (No-Operation)
are one byte; every other kind has a length byte that counts kind and length. Unknown
kinds are skipped by their length (RFC 9293 §3.1, MUST-6/MUST-7 "be prepared to handle
an illegal option length"). A length of 0 or 1, a length running past the option area,
or a wrong fixed length for a kind we know (but MD5's: such an option is no signature,
as for Linux, and skipped) raises ``MalformedPacket(BAD_OPTION)``; the
segment is then dropped and counted, as RFC 9293 MUST-7 allows and stcp's contract
asks (bad option length: dropped, counted by reason). Linux is more lenient:
``tcp_parse_options`` stops at such a length, or ignores a known kind of the wrong
length, and takes the segment.

Understood kinds:

=====  ======  ============================================  =====================
kind   length  meaning                                       RFC
=====  ======  ============================================  =====================
2      4       Maximum Segment Size                          9293 §3.7.1
3      3       Window Scale (shift > 14 is used as 14)       7323 §2.3
4      2       SACK-Permitted                                2018 §2
5      2+8n    SACK blocks, n >= 1                           2018 §3
8      10      Timestamps (TSval, TSecr)                     7323 §3.2
19     18      MD5 signature                                 2385 §3.0
=====  ======  ============================================  =====================

Emission follows Linux ``tcp_options_write`` byte for byte, so our segments look like
the kernel's on the wire: NOP NOP MD5 signature (its 16 bytes filled in by
``build_packet``); MSS; SACK-Permitted fused with Timestamps (or NOP NOP before
Timestamps, or NOP NOP before a lone SACK-Permitted); NOP Window Scale; NOP NOP SACK
blocks. Everything is a multiple of 4 bytes and at most 40; SACK blocks that do not fit
are left out (RFC 2018 §3: "the first block MUST specify the most recent" one, so we
drop from the end).
"""

from __future__ import annotations

import struct

from .drop import DropReason, MalformedPacket
from .tcp import NO_OPTIONS, TcpOptions

MAX_OPTIONS_LEN = 40
"""Data offset is 4 bits of 32-bit words: 60 - 20 bytes (RFC 9293 §3.1)."""

MAX_WSCALE = 14
"""RFC 7323 §2.3: a larger shift is logged and treated as 14."""

KIND_EOL = 0
KIND_NOP = 1
KIND_MSS = 2
KIND_WSCALE = 3
KIND_SACK_PERMITTED = 4
KIND_SACK = 5
KIND_TIMESTAMPS = 8
KIND_MD5 = 19
MD5_DIGEST_LEN = 16
MD5_OPTION_LEN = 20
"""NOP NOP kind length digest: what the signature takes of the option space."""

_II = struct.Struct("!II")
_NOP_NOP_TS = struct.Struct("!BBBBII")
_NOP_NOP_TS_PREFIX = b"\x01\x01\x08\x0a"
_MSS = struct.Struct("!BBH")
_SACKPERM_TS = b"\x04\x02\x08\x0a"
_NOP_WS = b"\x01\x03\x03"
_NOP_NOP_SACKPERM = b"\x01\x01\x04\x02"
_NOP_NOP_MD5 = b"\x01\x01\x13\x12"


def _bad(detail: str) -> MalformedPacket:
    return MalformedPacket(DropReason.BAD_OPTION, detail)


def parse_options_untrusted(buf: bytes | bytearray | memoryview) -> TcpOptions:
    """Parse the option bytes of a TCP header (everything between byte 20 and the data offset).

    Args:
        buf: The option area, untrusted.

    Returns:
        The recognised options; unknown kinds are skipped. When an option appears
        twice the last one wins (Linux does the same).

    Raises:
        MalformedPacket: ``BAD_OPTION`` for a length of 0 or 1, an option running
            past the end, or a wrong length for a known kind.
    """
    n = len(buf)
    if n == 12 and buf[:4] == _NOP_NOP_TS_PREFIX:
        # Fast path: every data segment of a timestamp-enabled connection (RFC 7323
        # Appendix A layout), as Linux's tcp_fast_parse_options does.
        return TcpOptions(None, None, False, _II.unpack_from(buf, 4), (), None)
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    timestamps: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    md5: bytes | None = None
    i = 0
    while i < n:  # bounded: i grows by >= 1 each round
        kind = buf[i]
        if kind == KIND_EOL:
            break
        if kind == KIND_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise _bad(f"option kind {kind} at {i} has no length byte")
        length = buf[i + 1]
        if length < 2:
            raise _bad(f"option kind {kind} at {i} has length {length}")
        if i + length > n:
            raise _bad(f"option kind {kind} at {i} length {length} runs past {n}")
        if kind == KIND_MSS:
            if length != 4:
                raise _bad(f"MSS length {length}")
            mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == KIND_WSCALE:
            if length != 3:
                raise _bad(f"window scale length {length}")
            wscale = min(buf[i + 2], MAX_WSCALE)
        elif kind == KIND_SACK_PERMITTED:
            if length != 2:
                raise _bad(f"SACK-permitted length {length}")
            sack_permitted = True
        elif kind == KIND_TIMESTAMPS:
            if length != 10:
                raise _bad(f"timestamps length {length}")
            timestamps = _II.unpack_from(buf, i + 2)
        elif kind == KIND_SACK:
            if length < 10 or (length - 2) % 8:
                raise _bad(f"SACK length {length}")
            sack_blocks = tuple(_II.unpack_from(buf, j) for j in range(i + 2, i + length, 8))
        elif kind == KIND_MD5 and length == 2 + MD5_DIGEST_LEN:
            # (another length is no signature, as for Linux: skipped; a stack that
            # expects one drops the segment as unsigned)
            md5 = bytes(buf[i + 2 : i + length])
        i += length
    return TcpOptions(mss, wscale, sack_permitted, timestamps, sack_blocks, md5)


def emit_options(opts: TcpOptions) -> bytes:
    """Serialise options in Linux's order and padding (``tcp_options_write``).

    Args:
        opts: The options to send. ``wscale`` must be 0..255 and ``mss`` 0..65535
            (they are our own values; a larger shift than 14 is sent as given).

    Returns:
        Option bytes, a multiple of 4 long and at most 40; empty for no options.
        SACK blocks beyond the space left are omitted, last ones first. An ``md5``
        comes first, as given (``build_packet`` emits zeros, then signs).
    """
    if opts is NO_OPTIONS:
        return b""
    mss, wscale, sack_permitted, timestamps, sack_blocks, md5 = opts
    if (
        timestamps is not None
        and md5 is None
        and mss is None
        and wscale is None
        and not sack_permitted
        and not sack_blocks
    ):
        return _NOP_NOP_TS.pack(1, 1, 8, 10, timestamps[0], timestamps[1])
    out = bytearray()
    if md5 is not None:
        if len(md5) != MD5_DIGEST_LEN:
            raise ValueError(f"an MD5 signature is {MD5_DIGEST_LEN} bytes, not {len(md5)}")
        out += _NOP_NOP_MD5
        out += md5
    if mss is not None:
        out += _MSS.pack(KIND_MSS, 4, mss)
    if timestamps is not None:
        out += _SACKPERM_TS if sack_permitted else _NOP_NOP_TS_PREFIX
        out += _II.pack(timestamps[0], timestamps[1])
    elif sack_permitted:
        out += _NOP_NOP_SACKPERM
    if wscale is not None:
        out += _NOP_WS
        out.append(wscale)
    if sack_blocks:
        room = (MAX_OPTIONS_LEN - len(out) - 4) // 8
        if room > 0:
            blocks = sack_blocks[:room]
            out += bytes((KIND_NOP, KIND_NOP, KIND_SACK, 2 + 8 * len(blocks)))
            for left, right in blocks:
                out += _II.pack(left, right)
    return bytes(out)
