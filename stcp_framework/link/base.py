"""The packet device interface: batches of raw IP packets in and out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

SplitPacket = tuple[bytearray, "bytes | memoryview"]
"""A packet as its headers and its payload (see ``accepts_split_packets``)."""

GsoPacket = tuple[bytearray, "bytes | memoryview", int]
"""A TCP super-segment as its headers, its payload and its ``gso_size`` (see
``tx_gso_max``)."""

OutPacket = bytes | bytearray | memoryview | SplitPacket | GsoPacket
"""What ``send_batch`` takes: a whole packet, or a split one where accepted."""


class PacketDevice(Protocol):
    """A source and sink of raw IPv4/IPv6 packets (no link-layer header).

    ``recv_batch`` waits until at least one packet is available, then returns every
    packet that can be read without blocking, up to ``max_packets``. The returned
    buffers stay valid until the next ``recv_batch`` call.

    Optional attributes (read with ``getattr``, default ``False``):

    * ``rx_checksum_verified``: every packet ``recv_batch`` returns has a TCP checksum
      that was verified (by the device or the kernel), or was produced locally with the
      checksum left to offload; the stack then skips its own verification.
    * ``accepts_split_packets``: ``send_batch`` also takes ``(headers, payload)`` pairs
      (``SplitPacket``), written as one packet without joining them in Python (a
      ``writev``): big payloads are never copied by the stack.
    * ``tx_checksum_offload``: the device completes TCP checksums of sent packets; the
      stack writes only the pseudo-header sum into the checksum field
      (``build_packet(..., offload_checksum=True)``: csum_start = IP header length,
      csum_offset = 16).
    * ``tx_gso_max`` (an ``int``, default 0): with ``accepts_split_packets`` and
      ``tx_checksum_offload``, ``send_batch`` also takes ``(headers, payload, gso_size)``
      triples (``GsoPacket``): one TCP super-segment of up to ``tx_gso_max`` payload
      bytes, whose IP length covers it all and whose checksum field holds the
      pseudo-header sum of the whole; the device (Linux GSO/TSO) splits it into
      segments of ``gso_size`` payload bytes with their own sequence numbers and
      checksums, PSH and FIN on the last only.
    * ``send_batch_nowait(packets) -> int`` (a method): write what the device takes at
      once, with no schedule point, and return how many packets it handled; the stack
      sends the rest with ``send_batch``. It saves the transmit task one trip through
      trio's scheduler per round (``TunDevice`` has it).
    """

    @property
    def mtu(self) -> int: ...

    async def recv_batch(self, max_packets: int) -> list[memoryview]: ...

    async def send_batch(self, packets: Sequence[OutPacket]) -> None: ...

    async def aclose(self) -> None: ...
