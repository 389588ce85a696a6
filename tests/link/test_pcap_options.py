"""``PcapDevice`` options: ``snaplen`` (headers-only captures) and the offload flags it
passes through from the device it wraps (``link/base.py``)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from stcp_framework.link.pcap import HEADERS_SNAPLEN, PcapDevice
from stcp_framework.link.sim import SimNetwork

A = "198.18.0.1"
B = "198.18.0.2"


def ip4(payload: bytes) -> bytes:
    return (
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                    bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
        + payload
    )  # fmt: skip


def records(path: Path) -> tuple[int, list[tuple[int, int, bytes]]]:
    """(file snaplen, [(incl_len, orig_len, data)]) of a libpcap file."""
    data = path.read_bytes()
    snaplen = struct.unpack_from("<I", data, 16)[0]
    out = []
    off = 24
    while off < len(data):
        _sec, _usec, incl_len, orig_len = struct.unpack_from("<IIII", data, off)
        off += 16
        out.append((incl_len, orig_len, data[off : off + incl_len]))
        off += incl_len
    assert off == len(data)
    return snaplen, out


async def test_snaplen_keeps_the_first_bytes_and_the_original_length(tmp_path: Path) -> None:
    net = SimNetwork(1)
    dev = PcapDevice(net.attach(A), tmp_path / "s.pcap", snaplen=HEADERS_SNAPLEN)
    net.attach(B)
    big, small = ip4(bytes(range(256)) * 10), ip4(b"tiny")
    await dev.send_batch([big, small])
    await dev.aclose()
    snaplen, recs = records(tmp_path / "s.pcap")
    assert snaplen == HEADERS_SNAPLEN == 128
    assert recs == [(128, len(big), big[:128]), (len(small), len(small), small)]


async def test_snaplen_must_be_positive(tmp_path: Path) -> None:
    net = SimNetwork(1)
    with pytest.raises(ValueError, match="snaplen"):
        PcapDevice(net.attach(A), tmp_path / "z.pcap", snaplen=0)


class _Offloading:
    """The attributes of an offloading device that matter here."""

    mtu = 1500
    rx_checksum_verified = True
    tx_checksum_offload = True


async def test_offload_flags_are_the_inner_devices(tmp_path: Path) -> None:
    # Hiding them made the stack verify checksums the kernel had left partial, and
    # drop every kernel SYN-ACK as bad-tcp-checksum.
    plain = PcapDevice(SimNetwork(1).attach(A), tmp_path / "p.pcap")
    offloading = PcapDevice(_Offloading(), tmp_path / "o.pcap")  # type: ignore[arg-type]
    try:
        assert (plain.rx_checksum_verified, plain.tx_checksum_offload) == (False, False)
        assert (offloading.rx_checksum_verified, offloading.tx_checksum_offload) == (True, True)
    finally:
        plain.writer.close()
        offloading.writer.close()


class _Splitting:
    """A device that takes ``(headers, payload[, gso_size])`` packets and keeps them."""

    mtu = 65000
    accepts_split_packets = True
    tx_checksum_offload = True
    tx_gso_max = 65000

    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send_batch(self, packets: list[object]) -> None:
        self.sent.extend(packets)


@pytest.mark.parametrize("snaplen", [HEADERS_SNAPLEN, 20, 262144])
async def test_split_and_gso_packets_are_recorded_whole_up_to_the_snaplen(
    tmp_path: Path, snaplen: int
) -> None:
    """A zero-copy send is one record of its headers and payload; only what the
    snaplen keeps is copied, and each batch is in the file when ``send_batch``
    returns (a server killed with SIGKILL leaves its capture up to its last batch)."""
    inner = _Splitting()
    dev = PcapDevice(inner, tmp_path / "g.pcap", snaplen=snaplen)  # type: ignore[arg-type]
    whole = ip4(bytes(range(200)) * 30)
    head, payload = bytearray(whole[:60]), memoryview(whole)[60:]
    small = ip4(b"tiny")
    await dev.send_batch([(head, payload), (head, payload, 1000), small])
    assert inner.sent == [(head, payload), (head, payload, 1000), small]
    _, recs = records(tmp_path / "g.pcap")  # before any close: flushed
    keep = min(snaplen, len(whole))
    assert recs == [
        (keep, len(whole), whole[:keep]),
        (keep, len(whole), whole[:keep]),
        (min(snaplen, len(small)), len(small), small[:snaplen]),
    ]
    dev.writer.close()


async def test_append_continues_a_capture_and_refuses_another_file(tmp_path: Path) -> None:
    """``append=True`` (``stcp run --pcap``): a restarted server's packets follow the
    ones before in one capture; a file that is not such a capture is refused, not
    overwritten."""
    path = tmp_path / "run.pcap"
    first, second = ip4(b"before the kill"), ip4(b"after the restart")
    for packet in (first, second):
        dev = PcapDevice(SimNetwork(1).attach(A), path, snaplen=HEADERS_SNAPLEN, append=True)
        await dev.send_batch([packet])
        dev.writer.close()  # (no aclose: a killed process closes nothing)
    snaplen, recs = records(path)
    assert snaplen == HEADERS_SNAPLEN
    assert [data for _, _, data in recs] == [first, second]
    with pytest.raises(ValueError, match="not a capture to continue"):
        PcapDevice(SimNetwork(1).attach(A), path, append=True)  # another snaplen
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not a capture at all, and longer than a pcap header")
    with pytest.raises(ValueError, match="not a capture to continue"):
        PcapDevice(SimNetwork(1).attach(A), notes, append=True)
    assert notes.read_bytes().startswith(b"not a capture")


async def test_append_cuts_a_record_a_killed_writer_left_unfinished(tmp_path: Path) -> None:
    """A SIGKILL in the middle of a batch's writes leaves half a record; appended behind
    it, the restarted server's packets would be unreadable (a reader stops there)."""
    path = tmp_path / "cut.pcap"
    dev = PcapDevice(SimNetwork(1).attach(A), path, append=True)
    kept, cut = ip4(b"whole"), ip4(b"cut short by the kill")
    await dev.send_batch([kept, cut])
    dev.writer.close()
    path.write_bytes(path.read_bytes()[:-7])
    dev = PcapDevice(SimNetwork(1).attach(A), path, append=True)
    after = ip4(b"after the restart")
    await dev.send_batch([after])
    dev.writer.close()
    _, recs = records(path)  # (asserts the records fill the file exactly)
    assert [data for _, _, data in recs] == [kept, after]
