"""TCP options: RFC 9293 §3.1 parsing rules, RFC 7323 §2.3 clamp, Linux emission order."""

from __future__ import annotations

import pytest
from hypothesis import given
from wire_strategies import tcp_options

from stcp_framework.wire.drop import DropReason, MalformedPacket
from stcp_framework.wire.options import emit_options, parse_options_untrusted
from stcp_framework.wire.tcp import NO_OPTIONS, TcpOptions


@pytest.mark.parametrize(
    ("_description", "hex_options", "expected"),
    [
        ("none", "", NO_OPTIONS),
        (
            "Linux SYN",
            "020405b40402080a000000010000000001030307",
            TcpOptions(1460, 7, True, (1, 0), ()),
        ),
        ("NOP NOP TS", "0101080a0000000200000001", TcpOptions(timestamps=(2, 1))),
        ("EOL ends parsing", "0204059c00ffffff", TcpOptions(mss=1436)),
        ("unknown kind skipped by length", "1e0601020304" + "020405b4", TcpOptions(mss=1460)),
        ("window scale 15 clamped to 14 (RFC 7323 §2.3)", "0103030f", TcpOptions(wscale=14)),
        ("window scale 255 clamped", "010303ff", TcpOptions(wscale=14)),
        (
            "two SACK blocks",
            "0101051200000001000000020000000300000004",
            TcpOptions(sack_blocks=((1, 2), (3, 4))),
        ),
        ("last duplicate wins", "020405b4" + "02040200", TcpOptions(mss=512)),
    ],
)
def test_parse(_description: str, hex_options: str, expected: TcpOptions) -> None:
    assert parse_options_untrusted(bytes.fromhex(hex_options)) == expected


@pytest.mark.parametrize(
    ("_description", "hex_options"),
    [
        ("length 0", "1e00"),
        ("length 1", "1e01"),
        ("no length byte", "0101011e"),
        ("runs past the end", "1e0a0000"),
        ("MSS length 3", "020305"),
        ("WS length 4", "03040700"),
        ("SACK-permitted length 3", "040300"),
        ("TS length 8", "0808" + "00" * 6),
        ("SACK with no block", "0502"),
        ("SACK with a half block", "050600000000"),
    ],
)
def test_parse_rejects_bad_lengths(_description: str, hex_options: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_options_untrusted(bytes.fromhex(hex_options))
    assert info.value.reason is DropReason.BAD_OPTION


@pytest.mark.parametrize(
    ("_description", "opts", "hex_options"),
    [
        ("nothing", NO_OPTIONS, ""),
        (
            "Linux SYN (sackOK fused with TS)",
            TcpOptions(1460, 7, True, (1, 0)),
            "020405b40402080a000000010000000001030307",
        ),
        (
            "SYN without SACK",
            TcpOptions(1460, 7, False, (1, 0)),
            "020405b40101080a000000010000000001030307",
        ),
        ("SYN without TS", TcpOptions(1460, 7, True, None), "020405b40101040201030307"),
        ("SYN, MSS only", TcpOptions(mss=536), "02040218"),
        ("data segment", TcpOptions(timestamps=(5, 6)), "0101080a0000000500000006"),
        (
            "SACK after TS",
            TcpOptions(timestamps=(5, 6), sack_blocks=((1, 2),)),
            "0101080a00000005000000060101050a0000000100000002",
        ),
    ],
)
def test_emit_in_linux_order(_description: str, opts: TcpOptions, hex_options: str) -> None:
    assert emit_options(opts).hex() == hex_options


def test_emit_drops_sack_blocks_that_do_not_fit() -> None:
    blocks = ((1, 2), (3, 4), (5, 6), (7, 8))
    with_ts = emit_options(TcpOptions(timestamps=(1, 1), sack_blocks=blocks))
    assert len(with_ts) == 40
    assert parse_options_untrusted(with_ts).sack_blocks == blocks[:3]
    alone = emit_options(TcpOptions(sack_blocks=blocks))
    assert len(alone) == 36
    assert parse_options_untrusted(alone).sack_blocks == blocks


@given(tcp_options)
def test_emit_is_aligned_bounded_and_parses_back(opts: TcpOptions) -> None:
    raw = emit_options(opts)
    assert len(raw) % 4 == 0 and len(raw) <= 40
    parsed = parse_options_untrusted(raw)
    assert parsed._replace(sack_blocks=()) == opts._replace(sack_blocks=())
    assert parsed.sack_blocks == opts.sack_blocks[: len(parsed.sack_blocks)]
