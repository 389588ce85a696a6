"""``PcapDevice`` writes a libpcap file (LINKTYPE_RAW) that a reader can parse back."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import trio
import trio.testing

from stcp_framework.link.pcap import LINKTYPE_RAW, PCAP_MAGIC, PcapDevice
from stcp_framework.link.sim import SimNetwork

A = "198.18.0.1"
B = "198.18.0.2"


class Record(NamedTuple):
    ts_sec: int
    ts_usec: int
    orig_len: int
    data: bytes


def read_pcap(path: Path) -> tuple[int, list[Record]]:
    """A tiny reader for https://www.tcpdump.org/manpages/pcap-savefile.5.html."""
    data = path.read_bytes()
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor) == (PCAP_MAGIC, 2, 4)
    assert snaplen >= 65535
    records: list[Record] = []
    off = 24
    while off < len(data):
        ts_sec, ts_usec, incl_len, orig_len = struct.unpack_from("<IIII", data, off)
        off += 16
        assert ts_usec < 1_000_000
        records.append(Record(ts_sec, ts_usec, orig_len, data[off : off + incl_len]))
        off += incl_len
    assert off == len(data)
    return linktype, records


def ip4(src: str, dst: str, payload: bytes) -> bytes:
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
            bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
        )
        + payload
    )  # fmt: skip


async def test_records_packets_in_both_directions(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(1, delay=0.25)
    path = tmp_path / "a.pcap"
    a = PcapDevice(net.attach(A), path, clock=trio.current_time)
    b = net.attach(B)
    assert a.mtu == 1500
    t0 = trio.current_time()
    out = [ip4(A, B, b"one"), ip4(A, B, b"two" * 100)]
    await a.send_batch(out)
    await b.recv_batch(10)
    back = ip4(B, A, b"three")
    await b.send_batch([back])
    [got] = await a.recv_batch(10)
    assert bytes(got) == back
    await a.aclose()

    linktype, records = read_pcap(path)
    assert linktype == LINKTYPE_RAW == 101
    assert [r.data for r in records] == [*out, back]
    assert [r.orig_len for r in records] == [len(p) for p in [*out, back]]
    times = [r.ts_sec + r.ts_usec / 1e6 for r in records]
    assert times[0] == times[1]
    assert abs(times[0] - t0) < 1e-6 * 2 + 1e-6 * abs(t0) * 1e-6
    assert abs((times[2] - times[0]) - 0.5) < 2e-6  # sent at +0.25, arrived at +0.5


async def test_aclose_flushes_and_closes_the_inner_device(tmp_path: Path) -> None:
    net = SimNetwork(1)
    inner = net.attach(A)
    net.attach(B)
    dev = PcapDevice(inner, tmp_path / "b.pcap", clock=lambda: 1234.5678915)
    await dev.send_batch([ip4(A, B, b"x")])
    await dev.aclose()
    assert inner.closed
    assert dev.writer.closed
    _, [record] = read_pcap(tmp_path / "b.pcap")
    assert (record.ts_sec, record.ts_usec) == (1234, 567892)


async def test_empty_capture_is_a_valid_file(tmp_path: Path) -> None:
    net = SimNetwork(1)
    dev = PcapDevice(net.attach(A), tmp_path / "c.pcap")
    await dev.aclose()
    assert read_pcap(tmp_path / "c.pcap") == (LINKTYPE_RAW, [])
