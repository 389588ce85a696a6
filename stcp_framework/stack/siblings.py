"""The other workers on a multi-queue TUN device: segments of flows we do not hold go there.

Theory of operation:
    ``stcp run --workers N`` runs N processes on one ``IFF_MULTI_QUEUE`` TUN device, each
    holding one queue (``TunDevice.open(queue=i)``) and its own instance name, so each
    claims, stores and restores only its own flows. The kernel picks the queue of a
    packet it sends us by flow: the queue that last wrote a packet of that flow (its
    flow table, entries expire after about 3 s idle), else a hash of the 4-tuple modulo
    the number of attached queues. A connection a worker accepts therefore stays with it
    while the number of queues stays the same.

    That number changes when a worker dies or comes back, and a restarted worker may get
    another queue index. A segment then reaches a worker that does not hold its flow.
    Instead of the RST RFC 9293 prescribes for a closed connection, that worker hands the
    raw packet to the next worker in the ring (``forward``), one Unix datagram on the
    abstract socket ``@stcp-workers/DEVICE/INDEX`` prefixed with a hop count. The worker
    that holds the flow takes it as if it came from the device and answers on its own
    queue, which also steers the flow's next packets back to it. After ``count - 1``
    hops every worker has seen the segment: the last answers as a lone stack would (RST,
    RFC 9293 §3.10.7.1). A sibling that is down (restarting: its socket is gone) or whose
    socket buffer is full makes the segment a drop, never an RST: the flow may be one of
    its own, restored as soon as it is back, and the peer retransmits.

    Abstract names belong to the network namespace, as device names do, and disappear
    with their process, also after ``SIGKILL``. They have no file permissions, so the
    kernel attaches the sender's credentials to each datagram (``SO_PASSCRED``) and
    ``receive`` drops what another user sent (``rejected``): a forged segment needs the
    privileges that writing to the TUN device needs anyway.

    A SYN is accepted by whichever worker it reaches (a SYN retransmitted while the
    queues change may reach two). The peer completes the handshake with one of the two
    SYN-ACKs; its ACK reaching the other worker -- which holds the flow in SYN-RECEIVED
    and would answer RST, resetting the peer's connection -- goes round the ring like a
    segment of an unknown flow, and that worker drops its half-open connection
    silently (``Runtime._answered_elsewhere``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import trio

from ..errors import StcpConfigError
from ..link.claim import claim_name

__all__ = ["Siblings", "sibling_address"]

_SOCKET_BUFFER = 4 << 20  # room for a burst of forwarded super-segments
_MAX_DATAGRAM = 0x10000 + 1  # a hop byte and the largest IP packet
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CMSG_SPACE = socket.CMSG_SPACE(_UCRED.size)


def sibling_address(group: str, index: int) -> str:
    """The abstract Unix address of worker ``index`` of ``group`` (a device name)."""
    return f"\0stcp-workers/{group}/{index}"


class Siblings:
    """Worker ``index`` of ``count`` on device ``group``: its forwarding socket.

    Binding claims the index (a second process with the same index is refused).

    Raises:
        StcpConfigError: index out of range, or another process is that worker.
    """

    def __init__(self, group: str, index: int, count: int) -> None:
        if count < 1 or not 0 <= index < count:
            raise StcpConfigError(f"worker {index} of {count}: need 0 <= index < count")
        self.group = group
        self.index = index
        self.count = count
        self._next = sibling_address(group, (index + 1) % count)
        sock = claim_name(sibling_address(group, index)[1:])
        if sock is None:
            raise StcpConfigError(
                f"worker {index} of device {group} is already running: stop it first"
            )
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock = sock
        self._uid = os.geteuid()
        self.rejected = 0  # datagrams from another user, dropped

    @property
    def last_hop(self) -> int:
        """The hop count at which every worker has seen a segment."""
        return self.count - 1

    def forward(self, packet: bytes | memoryview, hops: int) -> bool:
        """Hand ``packet`` to the next worker with hop count ``hops``; never blocks.

        Returns:
            False if the next worker is down or cannot take it now (the caller drops it).
        """
        try:
            self._sock.sendmsg((bytes((hops,)), packet), (), 0, self._next)
        except (ConnectionRefusedError, FileNotFoundError, BlockingIOError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS, errno.ECONNREFUSED):
                return False
            raise
        return True

    async def receive(self, max_packets: int) -> list[tuple[int, memoryview]]:
        """Wait for forwarded packets; return up to ``max_packets`` as (hops, packet)."""
        recvmsg = self._sock.recvmsg
        while True:
            out: list[tuple[int, memoryview]] = []
            while len(out) < max_packets:
                try:
                    data, ancillary, _, _ = recvmsg(_MAX_DATAGRAM, _CMSG_SPACE)
                except BlockingIOError:
                    break
                if not self._from_us(ancillary):
                    self.rejected += 1
                elif len(data) > 1:
                    out.append((data[0], memoryview(data)[1:]))
            if out:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return out
            await trio.lowlevel.wait_readable(self._sock)

    def _from_us(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                uid: int = _UCRED.unpack_from(value)[1]
                return uid == self._uid
        return False

    def close(self) -> None:
        """Release the index (idempotent)."""
        self._sock.close()
