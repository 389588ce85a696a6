"""``PcapDevice``: a ``PacketDevice`` wrapper that records every packet to a pcap file.

Theory of operation:
    Wrap any device (``PcapDevice(TunDevice(...), "run.pcap")``, smoltcp ``phy::PcapWriter``
    style) and read the file with ``tcpdump -r`` or Wireshark. The file is classic libpcap
    (https://www.tcpdump.org/manpages/pcap-savefile.5.html) with link type
    ``LINKTYPE_RAW`` (101): each record is a bare IPv4 or IPv6 packet, exactly what a TUN
    device carries. Records are written in the order packets pass the wrapper: received
    packets when ``recv_batch`` returns them, sent packets before they are handed to the
    inner device. Timestamps come from the ``clock`` callable (seconds as a float;
    ``time.time`` by default, ``trio.current_time`` for simulated runs) with microsecond
    resolution. The optional offload flags of ``link/base.py`` are the inner device's:
    with checksum offload the recorded TCP checksums of packets the kernel or the stack
    left for the other to complete are partial, as tcpdump shows on an offloading NIC.
    ``snaplen`` keeps only the first bytes of each packet (the record's
    ``orig_len`` still says how long it was), as ``tcpdump -s``: 128 bytes hold the
    IPv6 and TCP headers with every option, so bulk transfers leave small captures.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from .base import OutPacket, PacketDevice

__all__ = ["HEADERS_SNAPLEN", "LINKTYPE_RAW", "PCAP_MAGIC", "PcapDevice", "PcapWriter"]

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
LINKTYPE_RAW = 101  # raw IPv4/IPv6, https://www.tcpdump.org/linktypes.html
_SNAPLEN = 262144  # tcpdump's default; larger than any TUN packet (MTU <= 65535)
HEADERS_SNAPLEN = 128  # IPv6 (40) + TCP with the largest options (60), rounded up
_FILE_HEADER = struct.Struct(
    "<IHHiIII"
)  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
_RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


def _cut_partial_record(path: str | os.PathLike[str], header: bytes) -> None:
    """Check that ``path`` starts with ``header``, and cut a last record that a killed
    writer left unfinished (a reader stops at it, and would never see what follows).

    Raises:
        ValueError: ``path`` does not start with ``header``.
    """
    with open(path, "r+b") as existing:
        if existing.read(len(header)) != header:
            raise ValueError(
                f"{os.fspath(path)} is not a capture to continue: not a pcap file of raw "
                f"IP packets with snaplen {_FILE_HEADER.unpack(header)[5]}"
            )
        end = existing.seek(0, os.SEEK_END)
        good = existing.seek(len(header))
        while good < end:
            record = existing.read(_RECORD_HEADER.size)
            if len(record) < _RECORD_HEADER.size:
                break
            incl_len = _RECORD_HEADER.unpack(record)[2]
            if good + _RECORD_HEADER.size + incl_len > end:
                break
            good = existing.seek(incl_len, os.SEEK_CUR)
        if good < end:
            existing.truncate(good)


class PcapWriter:
    """Writes packets to a libpcap file; usable on its own or through ``PcapDevice``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        snaplen: int = _SNAPLEN,
        append: bool = False,
    ) -> None:
        """``append``: continue the capture in ``path`` if it holds one with the same
        header (a restarted server's), else start it; without, ``path`` is truncated.

        Raises:
            ValueError: A bad ``snaplen``, or ``append`` to a file that is not such a
                capture.
            OSError: ``path`` cannot be opened.
        """
        if snaplen < 1:
            raise ValueError(f"snaplen must be >= 1, not {snaplen}")
        self._clock = clock
        self._snaplen = snaplen
        header = _FILE_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)
        self._file: BinaryIO = open(path, "ab" if append else "wb")  # noqa: SIM115 -- close()
        if append and self._file.tell() > 0:
            try:
                _cut_partial_record(path, header)
            except ValueError:
                self._file.close()
                raise
            self._file.seek(0, os.SEEK_END)
        else:
            self._file.write(header)
        self.packets_written = 0

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._file.closed

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        """Append one packet record, timestamped by the clock."""
        self._record(len(packet), packet, b"")

    def write_parts(
        self, head: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview
    ) -> None:
        """Append one packet given as its headers and its payload (a zero-copy send):
        only the bytes the snaplen keeps are copied."""
        self._record(len(head) + len(payload), head, payload)

    def _record(
        self,
        orig_len: int,
        head: bytes | bytearray | memoryview,
        rest: bytes | bytearray | memoryview,
    ) -> None:
        if self._file.closed:
            return
        ts_usec_total = max(0, round(self._clock() * 1_000_000))
        ts_sec, ts_usec = divmod(ts_usec_total, 1_000_000)
        incl_len = min(orig_len, self._snaplen)
        write = self._file.write
        write(_RECORD_HEADER.pack(ts_sec & 0xFFFFFFFF, ts_usec, incl_len, orig_len))
        kept = head[:incl_len]
        write(kept)
        if len(kept) < incl_len:
            write(rest[: incl_len - len(kept)])
        self.packets_written += 1

    def flush(self) -> None:
        """Push buffered records to the file."""
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()


class PcapDevice:
    """A ``PacketDevice`` that forwards to ``inner`` and records every packet in ``path``.

    Args:
        inner: the device to wrap.
        path: pcap file to create (truncated if it exists).
        clock: timestamp source in seconds (``time.time`` by default).
        snaplen: bytes kept of each packet (all of it by default; ``HEADERS_SNAPLEN``
            keeps the IP and TCP headers only).
        append: continue the capture already in ``path`` (``PcapWriter``).
    """

    def __init__(
        self,
        inner: PacketDevice,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        snaplen: int = _SNAPLEN,
        append: bool = False,
    ) -> None:
        self.inner = inner
        self.path = os.fspath(path)
        self.writer = PcapWriter(path, clock=clock, snaplen=snaplen, append=append)

    @property
    def mtu(self) -> int:
        """The inner device's MTU."""
        return self.inner.mtu

    @property
    def rx_checksum_verified(self) -> bool:
        """The inner device's optional offload flag (``link/base.py``), passed through."""
        return bool(getattr(self.inner, "rx_checksum_verified", False))

    @property
    def tx_checksum_offload(self) -> bool:
        """The inner device's optional offload flag (``link/base.py``), passed through."""
        return bool(getattr(self.inner, "tx_checksum_offload", False))

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        """Receive from the inner device and record each packet (the batch is flushed to
        the file before the stack sees it: a process killed with SIGKILL leaves a
        capture up to its last batch)."""
        packets = await self.inner.recv_batch(max_packets)
        write = self.writer.write
        for pkt in packets:
            write(pkt)
        self.writer.flush()
        return packets

    @property
    def tx_gso_max(self) -> int:
        """The inner device's ``tx_gso_max`` (``link/base.py``), passed through; each
        super-segment is recorded as is, one record of more than the MTU."""
        return int(getattr(self.inner, "tx_gso_max", 0))

    @property
    def accepts_split_packets(self) -> bool:
        return bool(getattr(self.inner, "accepts_split_packets", False))

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        """Record each packet and flush, then send the batch on the inner device."""
        writer = self.writer
        for pkt in packets:
            if isinstance(pkt, tuple):
                writer.write_parts(pkt[0], pkt[1])
            else:
                writer.write(pkt)
        writer.flush()
        await self.inner.send_batch(packets)

    async def aclose(self) -> None:
        """Flush and close the pcap file, then close the inner device."""
        self.writer.close()
        await self.inner.aclose()
