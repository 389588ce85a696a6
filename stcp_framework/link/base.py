"""The packet device interface: batches of raw IP packets in and out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class PacketDevice(Protocol):
    """A source and sink of raw IPv4/IPv6 packets (no link-layer header).

    ``recv_batch`` waits until at least one packet is available, then returns every
    packet that can be read without blocking, up to ``max_packets``. The returned
    buffers stay valid until the next ``recv_batch`` call.
    """

    @property
    def mtu(self) -> int: ...

    async def recv_batch(self, max_packets: int) -> list[memoryview]: ...

    async def send_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> None: ...

    async def aclose(self) -> None: ...
