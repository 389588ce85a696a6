"""Micro-benchmarks of the wire layer (not tests): ``python bench/wire_micro.py``.

Prints the best of 7 runs per operation in µs; compare ratios within one run on a
shared, noisy machine (ANCHORS.md).
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable

from stcp_framework.wire.checksum import internet_checksum
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, PSH, TcpOptions

A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
TS = TcpOptions(timestamps=(123456, 654321))


def best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    p1460 = os.urandom(1448)  # 1460 minus 12 bytes of timestamp option
    p64k = os.urandom(65535 - 20 - 32)
    pkt1460 = memoryview(build_packet(A4, B4, 80, 51234, 1, 2, ACK | PSH, 502, TS, p1460))
    pkt64k = memoryview(build_packet(A4, B4, 80, 51234, 1, 2, ACK | PSH, 502, TS, p64k))
    c1460 = os.urandom(1460)
    c64k = os.urandom(65536)
    rows = [
        ("checksum 1460 B", best_us(lambda: internet_checksum(c1460), 20000), 1460),
        ("checksum 64 KiB", best_us(lambda: internet_checksum(c64k), 300), 65536),
        (
            "parse 1460 B data segment",
            best_us(lambda: parse_packet_untrusted(pkt1460), 20000),
            1448,
        ),
        (
            "parse 1460 B, verify_checksum=False",
            best_us(lambda: parse_packet_untrusted(pkt1460, verify_checksum=False), 20000),
            1448,
        ),
        (
            "parse 64 KiB data segment",
            best_us(lambda: parse_packet_untrusted(pkt64k), 300),
            len(p64k),
        ),
        (
            "parse 64 KiB, verify_checksum=False",
            best_us(lambda: parse_packet_untrusted(pkt64k, verify_checksum=False), 20000),
            len(p64k),
        ),
        (
            "build 1460 B data segment",
            best_us(lambda: build_packet(A4, B4, 80, 51234, 1, 2, ACK, 502, TS, p1460), 20000),
            1448,
        ),
        (
            "build 64 KiB data segment",
            best_us(lambda: build_packet(A4, B4, 80, 51234, 1, 2, ACK, 502, TS, p64k), 300),
            len(p64k),
        ),
        (
            "build 64 KiB, offload_checksum=True",
            best_us(
                lambda: build_packet(
                    A4, B4, 80, 51234, 1, 2, ACK, 502, TS, p64k, offload_checksum=True
                ),
                2000,
            ),
            len(p64k),
        ),
        (
            "build 64 KiB headers (offload, GSO)",
            best_us(
                lambda: build_packet(
                    A4,
                    B4,
                    80,
                    51234,
                    1,
                    2,
                    ACK,
                    502,
                    TS,
                    p64k,
                    offload_checksum=True,
                    header_only=True,
                ),
                20000,
            ),
            len(p64k),
        ),
        (
            "build pure ACK (offload)",
            best_us(
                lambda: build_packet(
                    A4, B4, 80, 51234, 1, 2, ACK, 502, TS, b"", offload_checksum=True
                ),
                20000,
            ),
            1,
        ),
    ]
    print(f"{'operation':40s} {'µs':>9s} {'MB/s of payload':>16s}")
    for name, us, nbytes in rows:
        print(f"{name:40s} {us:9.2f} {nbytes / us:16.0f}")


if __name__ == "__main__":
    main()
