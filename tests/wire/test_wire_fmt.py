"""tcpdump-style one-line formatting."""

from __future__ import annotations

import pytest

from stcp_framework.wire.fmt import format_flags, format_packet, format_segment
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import (
    ACK,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    URG,
    Packet,
    TcpOptions,
    TcpSegment,
)


def seg(
    flags: int, payload: bytes = b"", options: TcpOptions = NO_OPTIONS, **kw: int
) -> TcpSegment:
    fields = {"seq": 1000, "ack": 1, "window": 64240, "urgent": 0} | kw
    return TcpSegment(
        51234,
        80,
        fields["seq"],
        fields["ack"],
        flags,
        fields["window"],
        fields["urgent"],
        options,
        payload,
    )


@pytest.mark.parametrize(
    ("segment", "line"),
    [
        (
            seg(SYN, options=TcpOptions(1460, 7, True, (1, 0))),
            "S 1000:1000(0) win 64240 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>",
        ),
        (
            seg(SYN | ACK, options=TcpOptions(1460, 7, True, (1, 0))),
            "S. 1000:1000(0) ack 1 win 64240 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>",
        ),
        (
            seg(PSH | ACK, b"x" * 10, TcpOptions(timestamps=(2, 1)), window=502),
            "P. 1000:1010(10) ack 1 win 502 <nop,nop,TS val 2 ecr 1>",
        ),
        (
            seg(ACK, options=TcpOptions(sack_blocks=((5, 9), (12, 20)))),
            ". 1000:1000(0) ack 1 win 64240 <nop,nop,sack 2 {5:9}{12:20}>",
        ),
        (seg(FIN | ACK, seq=2**32 - 2, ack=7), "F. 4294967294:4294967294(0) ack 7 win 64240"),
        (seg(ACK, b"ab", seq=2**32 - 1), ". 4294967295:1(2) ack 1 win 64240"),
        (seg(RST, window=0), "R 1000:1000(0) win 0"),
        (seg(URG | ACK, b"!", urgent=1), "U. 1000:1001(1) ack 1 win 64240 urg 1"),
    ],
)
def test_format_segment(segment: TcpSegment, line: str) -> None:
    assert format_segment(segment) == line


def test_format_flags() -> None:
    assert format_flags(0) == "none"
    assert format_flags(0xFF) == "SFRPUEW."


def test_format_packet_v4_and_v6() -> None:
    v4 = Packet(
        4,
        bytes([198, 18, 0, 2]),
        bytes([198, 18, 0, 1]),
        64,
        seg(SYN | ACK, options=TcpOptions(1460, 7, True, (1, 0)))._replace(
            src_port=80, dst_port=51234
        ),
    )
    assert format_packet(v4) == (
        "198.18.0.2:80 > 198.18.0.1:51234 S. 1000:1000(0) ack 1 win 64240 "
        "<mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>"
    )
    a6 = bytes.fromhex("20010db8000000000000000000000002")
    b6 = bytes.fromhex("20010db8000000000000000000000001")
    pkt = parse_packet_untrusted(build_packet(a6, b6, 80, 51234, 5, 6, ACK, 9, NO_OPTIONS, b""))
    assert format_packet(pkt) == "[2001:db8::2]:80 > [2001:db8::1]:51234 . 5:5(0) ack 6 win 9"
