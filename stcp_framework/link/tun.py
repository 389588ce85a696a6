"""A persistent Linux TUN device as a ``PacketDevice``.

Theory of operation:
    ``stcp net up`` creates the device once, *persistent* (``TUNSETPERSIST``), with the
    kernel-side address, in a private network namespace. A server process attaches to it
    with ``TunDevice.open(name)`` (``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``: raw IP
    packets, no packet-information prefix) and reads/writes one IP packet per
    ``read``/``write`` system call on a non-blocking descriptor. When the process dies the
    device stays, so the kernel silently drops packets while nobody holds it (DESIGN.md
    "Recovery"): peers retransmit and see no RST.

    Each read goes into a fresh ``bytes`` object (``FileIO.read``: allocated at the
    buffer size, filled by the kernel, shrunk to the packet), never reused: the returned
    ``memoryview`` slices stay valid for good (more than the ``PacketDevice`` contract),
    so the stack keeps a large payload as a view of it instead of copying it
    (``tcp/_arrive.py`` ``keep_payload``). About a million packets per second per core is
    the ceiling of such a Python loop (ANCHORS.md), so the loop does as little as it can
    per packet.

Queues:
    ``stcp net up`` makes the device ``IFF_MULTI_QUEUE``: each attach adds a queue and the
    kernel spreads flows over the queues, so ``stcp run --workers N`` can run one process
    per queue (``queue=I``; ``stack/siblings.py``). A lone process attaches one queue
    and sees everything. Since such a device takes any number of holders, each holder
    claims its queue index first (``queue_claim``), keeping the single holder per queue
    that a single-queue device enforces itself (``EBUSY``).

Offloads (``offload=True``, the default):
    The pure-Python TCP checksum costs about 90 µs per 64 KB, on receive and on send; the
    kernel does it for free. We attach with ``IFF_VNET_HDR`` (allowed on a persistent
    device created without it: the flag belongs to the attach, not the device), so every
    packet carries a ``struct virtio_net_hdr`` (``link/offload.py``), and call
    ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)``:

    * receive: the kernel leaves the checksums of what it generated partial
      (``NEEDS_CSUM``) or says it verified them (``DATA_VALID``); a packet with neither
      flag is verified here and dropped (``counters.rx_bad_checksum``) if wrong, so the
      device honestly sets ``rx_checksum_verified``. With TSO the kernel hands us TCP
      super-segments of up to 64 KB even at MTU 1500 (``counters.rx_gso_packets``): the
      IP total length is the super-segment's and its IPv4 header checksum is valid, so
      ``parse_packet_untrusted`` takes it as one large segment; the receive buffers are
      64 KB then.
    * send: ``tx_checksum_offload`` is set; each TCP packet whose checksum field holds
      the pseudo-header sum goes out with ``NEEDS_CSUM`` and the kernel completes it
      (``os.writev`` of header and packet: no copy). Other packets go out as they are.
      With ``tx_gso`` (the default), ``tx_gso_max`` is ``TX_GSO_MAX``: ``send_batch``
      takes ``(headers, payload, gso_size)`` TCP super-segments and writes them with a
      GSO header (``tx_gso_vnet_header``, ``counters.tx_gso_packets``); the kernel
      splits them into ``gso_size`` segments where it must (TSO send needs no
      ``TUNSETOFFLOAD`` flag: those describe what the kernel may hand *us*).

    Offload settings are device state and survive our detach: ``offload=False`` resets
    them (``TUNSETOFFLOAD(0)``) so the kernel again completes every checksum and
    segments to the MTU, exactly the behaviour without a virtio-net header.

See ``linux/Documentation/networking/tuntap.rst`` and ``linux/include/uapi/linux/if_tun.h``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import logging
import math
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..errors import StcpConfigError
from .base import OutPacket
from .claim import claim_name
from .handover import Handed
from .offload import VNET_HDR_LEN, rx_tcp_checksum_bad, tx_gso_vnet_header, tx_vnet_header

__all__ = [
    "TUN_PATH",
    "TX_GSO_MAX",
    "TunCounters",
    "TunDevice",
    "create_persistent_tun",
    "device_exists",
    "get_device_flags",
    "get_device_mtu",
    "missing_device_error",
    "queue_claim",
    "validate_device_name",
    "wait_for_queue",
]

logger = logging.getLogger("stcp.link")

TUN_PATH = "/dev/net/tun"

# linux/include/uapi/linux/if_tun.h: _IOW('T', 202, int) and friends.
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_PERSIST = 0x0800  # reported by TUNGETIFF
IFF_TUN_EXCL = 0x8000  # TUNSETIFF fails with EBUSY if the device already exists
IFF_VNET_HDR = 0x4000  # each packet is preceded by a struct virtio_net_hdr
IFF_MULTI_QUEUE = 0x0100  # each attach adds a queue; the kernel spreads flows over them
TUNGETFEATURES = 0x800454CF  # _IOR('T', 207, unsigned int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUNSETVNETLE = 0x400454DC  # _IOW('T', 220, int)
TUN_F_CSUM = 0x01  # "you can hand me unchecksummed packets"
TUN_F_TSO4 = 0x02  # ... and IPv4 TCP super-segments
TUN_F_TSO6 = 0x04  # ... and IPv6 TCP super-segments
_GSO_MAX_PACKET = 0xFFFF  # IP total length is 16 bits: the largest super-segment we read
TX_GSO_MAX = 65000
"""Payload bytes of the super-segments we send: with IPv6 + the largest TCP header
(100 bytes) it still fits the 16-bit IP length, as Linux's GSO_LEGACY_MAX_SIZE."""
_INT = struct.Struct("i")
_UINT = struct.Struct("I")
STANDBY_POLL = 0.005
"""Seconds between a standby's tries of the queue claim (``wait_for_queue``): what a
takeover waits at most, beyond the restore, for the name its dead holder freed (~200
binds a second while it waits: nothing to speak of)."""

# linux/include/uapi/linux/sockios.h and if.h
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922

IFF_UP = 0x1
IFF_RUNNING = 0x40

IFNAMSIZ = 16  # including the terminating NUL
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq { char name[16]; short flags; ... }
_IFREQ_INT = struct.Struct("16si20x")  # struct ifreq { char name[16]; int mtu; ... }

_MAX_BLOCKED_WRITE_WAITS = 1000
_RUNNING_TIMEOUT = 1.0  # seconds to wait for the carrier after attaching
_RUNNING_POLL_DELAY = 0.001  # bound on wait_writable rounds for one packet


@dataclass(slots=True)
class TunCounters:
    """Packet counters of one ``TunDevice``; never reset while the device is open."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0  # packets the kernel refused (e.g. EINVAL for a malformed packet)
    tx_blocked: int = 0  # times a write would block and we waited for writability
    rx_bad_checksum: int = 0  # offload: packets with a wrong TCP checksum, dropped here
    rx_gso_packets: int = 0  # offload: TCP super-segments (gso_type != NONE) received
    tx_gso_packets: int = 0  # offload: TCP super-segments written (tx_gso_max)


def _ifreq_name(name: str) -> bytes:
    """Encode an interface name for ``struct ifreq``, checking IFNAMSIZ."""
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b" " in raw or b"\0" in raw:
        raise StcpConfigError(
            f"bad device name {name!r}: use 1-15 ASCII characters without '/' or spaces"
        )
    return raw


def validate_device_name(name: str) -> None:
    """Check that ``name`` is a legal interface name (1-15 ASCII characters).

    Raises:
        StcpConfigError: it is not.
    """
    _ifreq_name(name)


def device_exists(name: str) -> bool:
    """Whether a network interface called ``name`` exists in the current namespace.

    Uses ``if_nametoindex`` (an ioctl on a socket of the *current* network namespace),
    unlike ``/sys/class/net``, which shows the namespace ``/sys`` was mounted in.
    """
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def get_device_mtu(name: str) -> int:
    """Read the MTU of interface ``name`` (``SIOCGIFMTU``)."""
    req = _IFREQ_INT.pack(_ifreq_name(name), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            res = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, req)
        except OSError as exc:
            raise _device_error(name, exc) from exc
    mtu: int = _IFREQ_INT.unpack(res)[1]
    return mtu


def get_device_flags(name: str) -> int:
    """Read the interface flags of ``name`` (``SIOCGIFFLAGS``: IFF_UP, IFF_RUNNING, ...)."""
    req = _IFREQ_FLAGS.pack(_ifreq_name(name), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            res = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req)
        except OSError as exc:
            raise _device_error(name, exc) from exc
    flags: int = _IFREQ_FLAGS.unpack(res)[1]
    return flags


async def _wait_running(name: str) -> None:
    """Wait (bounded) until the kernel has processed the carrier-on of our attach.

    Attaching turns the carrier on, but the kernel applies it asynchronously (linkwatch):
    until then the device's queueing discipline is ``noop`` and packets the kernel
    routes *to* the device are dropped. A restored stack's first "kick" would lose the
    peer's answer to that window, so we wait for IFF_RUNNING.
    """
    flags = get_device_flags(name)
    if not flags & IFF_UP:
        logger.warning("TUN device %s is down: run `ip link set dev %s up`", name, name)
        return
    with trio.move_on_after(_RUNNING_TIMEOUT):
        while not flags & IFF_RUNNING:
            await trio.sleep(_RUNNING_POLL_DELAY)
            flags = get_device_flags(name)
        return
    logger.warning("TUN device %s has no carrier after %.1f s", name, _RUNNING_TIMEOUT)


def _set_device_mtu(name: str, mtu: int) -> None:
    """Set the MTU of interface ``name`` (``SIOCSIFMTU``; needs CAP_NET_ADMIN)."""
    req = _IFREQ_INT.pack(_ifreq_name(name), mtu)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCSIFMTU, req)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise StcpConfigError(
                    f"MTU {mtu} rejected by device {name}: use a value between 68 and 65535"
                ) from exc
            raise _device_error(name, exc) from exc


def _open_tun_fd(tun_path: str) -> int:
    """Open ``/dev/net/tun`` non-blocking, translating errors into one-line advice."""
    try:
        return os.open(tun_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise StcpConfigError(
            f"{tun_path} is missing: load the tun module (`modprobe tun`) or give the "
            "container the device (`--device /dev/net/tun`)"
        ) from exc
    except PermissionError as exc:
        raise StcpConfigError(
            f"cannot open {tun_path}: needs root or CAP_NET_ADMIN (run as root inside the "
            "private network namespace)"
        ) from exc


def _device_error(name: str, exc: OSError) -> StcpConfigError:
    """Map an ``OSError`` from a TUN/interface ioctl to a one-line ``StcpConfigError``."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        return StcpConfigError(
            f"no permission to use TUN device {name}: needs root or CAP_NET_ADMIN "
            "(or the device's owner)"
        )
    if exc.errno == errno.EBUSY:
        return StcpConfigError(
            f"TUN device {name} is held by another process: stop that process first "
            "(one process at a time may hold the device)"
        )
    if exc.errno in (errno.ENODEV, errno.ENXIO):
        return missing_device_error(name)
    if exc.errno == errno.EINVAL:
        return StcpConfigError(f"device {name} is not a TUN device: pick another name")
    return StcpConfigError(f"TUN device {name}: {os.strerror(exc.errno or 0)}")


def _exists_error(name: str) -> StcpConfigError:
    return StcpConfigError(
        f"device {name} already exists: pick another name, or, if it is a TUN device "
        f"you made, remove it with `stcp net down --dev {name}`"
    )


def missing_device_error(name: str) -> StcpConfigError:
    return StcpConfigError(
        f"TUN device {name} not found: run `stcp net up --dev {name} --addr 198.18.0.1/24` "
        "inside a private network namespace"
    )


def create_persistent_tun(name: str, *, multi_queue: bool = True, tun_path: str = TUN_PATH) -> None:
    """Create a persistent TUN device ``name`` (down, no address) in the current namespace.

    The device outlives this call and every process (``TUNSETPERSIST``). ``stcp net up``
    configures addresses, MTU and link state afterwards. ``multi_queue`` (the default)
    makes an ``IFF_MULTI_QUEUE`` device: one process attaches as before, or several
    workers attach one queue each (``TunDevice.open(queue=...)``).

    Raises:
        StcpConfigError: the device already exists, or privileges/``/dev/net/tun`` are missing.
    """
    ifname = _ifreq_name(name)
    if device_exists(name):
        raise _exists_error(name)
    fd = _open_tun_fd(tun_path)
    try:
        try:
            fcntl.ioctl(
                fd,
                TUNSETIFF,
                _IFREQ_FLAGS.pack(
                    ifname,
                    IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL | (IFF_MULTI_QUEUE if multi_queue else 0),
                ),
            )
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise _exists_error(name) from exc
            raise _device_error(name, exc) from exc
    finally:
        os.close(fd)


def queue_claim(name: str, queue: int) -> socket.socket:
    """Claim queue ``queue`` of TUN device ``name`` for this process, or fail.

    A single-queue device refuses a second holder itself (``EBUSY``); a multi-queue one
    would take any number, each stealing a share of the flows, so every holder first
    binds the abstract Unix socket ``@stcp-tun/NAME/QUEUE`` (``link/claim.py``; it
    waits up to ``CLAIM_WAIT`` for a holder that is exiting). Close it to release.

    Raises:
        StcpConfigError: another process holds that queue.
    """
    sock = claim_name(f"stcp-tun/{name}/{queue}")
    if sock is None:
        raise StcpConfigError(
            f"TUN device {name} is held by another process"
            + (f" (queue {queue})" if queue else "")
            + ": stop that process first (one process at a time may hold a queue), or "
            "let this one wait for it: `stcp run --standby`"
        )
    return sock


async def wait_for_queue(name: str, queue: int) -> socket.socket:
    """Claim queue ``queue`` of TUN device ``name`` as soon as its holder lets it go --
    when that process exits, ``SIGKILL`` included -- however long that takes (a
    standby server, ``stcp run --standby``). Pass the claim to ``TunDevice.open``."""
    sock: socket.socket | None = await trio.to_thread.run_sync(
        functools.partial(claim_name, f"stcp-tun/{name}/{queue}", wait=math.inf, poll=STANDBY_POLL),
        abandon_on_cancel=True,
    )
    assert sock is not None  # (an endless wait returns a claim)
    return sock


def _tun_features(fd: int) -> int:
    """``TUNGETFEATURES``: the ``IFF_*`` flags this kernel's TUN driver accepts (0 if unknown)."""
    try:
        features: int = _UINT.unpack(fcntl.ioctl(fd, TUNGETFEATURES, bytes(_UINT.size)))[0]
    except OSError:
        return 0
    return features


def _configure_offloads(fd: int, name: str, *, offload: bool, gso: bool) -> bool:
    """Set the virtio-net header and the offloads of an attached descriptor.

    Returns:
        Whether TSO (receiving GSO super-segments) is on.
    """
    try:
        if not offload:
            # Undo what an earlier holder with offloads left on the device: without a
            # virtio-net header nobody could complete a partial checksum.
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            return False
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(VNET_HDR_LEN))
        try:
            fcntl.ioctl(fd, TUNSETVNETLE, _INT.pack(1))
        except OSError:
            if sys.byteorder != "little":  # the header is in host order without it
                raise
        if gso:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                logger.warning("TUN %s: the kernel refused TSO; checksum offload only", name)
                gso = False
            else:
                return True
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM)
    except OSError as exc:
        raise _device_error(name, exc) from exc
    return False


class TunDevice:
    """A persistent TUN device opened by this process (``PacketDevice``).

    Use ``await TunDevice.open(name)``; the constructor takes an already attached fd
    (attached with ``IFF_VNET_HDR`` and configured for offloads iff ``offload``).
    Only one task may call ``recv_batch`` at a time, and one task ``send_batch``.

    Attributes:
        rx_checksum_verified: ``offload``: every TCP packet ``recv_batch`` returns was
            verified (by the kernel or here) or generated locally with its checksum
            left partial (``link/base.py``).
        tx_checksum_offload: ``offload``: TCP packets whose checksum field holds the
            pseudo-header sum are completed by the kernel.
        gso: the kernel may hand us TCP super-segments of up to 64 KB.
        tx_gso_max: ``offload`` and ``tx_gso``: the largest payload of a TCP
            super-segment ``send_batch`` takes (``TX_GSO_MAX``); 0 = none (``link/base.py``).
        counters: packet counters (``TunCounters``).
    """

    def __init__(
        self,
        fd: int,
        name: str,
        mtu: int,
        *,
        offload: bool = False,
        gso: bool = False,
        tx_gso: bool = False,
    ) -> None:
        self._fd = fd
        self._name = name
        self._mtu = mtu
        self._file = io.FileIO(fd, "r+b", closefd=False)
        self._closed = False
        self._vnet_hdr_len = VNET_HDR_LEN if offload else 0
        self.gso = offload and gso
        self._buffer_size = self._vnet_hdr_len + (max(mtu, _GSO_MAX_PACKET) if self.gso else mtu)
        self.rx_checksum_verified = offload
        self.tx_checksum_offload = offload
        self.tx_gso_max = TX_GSO_MAX if offload and tx_gso else 0
        self.counters = TunCounters()
        self.queue = 0
        self._claim: socket.socket | None = None

    @classmethod
    async def open(
        cls,
        name: str,
        *,
        offload: bool = True,
        gso: bool = True,
        tx_gso: bool = True,
        mtu: int | None = None,
        queue: int = 0,
        tun_path: str = TUN_PATH,
        claim: socket.socket | None = None,
    ) -> TunDevice:
        """Attach to the existing persistent TUN device ``name``.

        Args:
            name: interface name, e.g. ``"stcp0"``.
            offload: attach with ``IFF_VNET_HDR`` and let the kernel do TCP checksums
                (``TUN_F_CSUM``); ``False`` resets the device's offloads and reads and
                writes bare IP packets with complete checksums.
            gso: with ``offload``, also accept TCP super-segments (``TUN_F_TSO4 |
                TUN_F_TSO6``): fewer, larger packets to handle at small MTUs.
            tx_gso: with ``offload``, take TCP super-segments to send (``tx_gso_max``):
                the stack then sends fewer, larger packets at small MTUs.
            mtu: if given, set the device MTU to this value first (needs CAP_NET_ADMIN);
                otherwise the device's MTU is used.
            queue: which queue of a multi-queue device this process holds (0 for a
                single process; worker ``i`` of a group holds queue ``i``). The kernel
                hands each queue the packets of its share of the flows; each queue has
                one holder at a time (``queue_claim``), as a single-queue device has.
            tun_path: the TUN clone device (for containers that put it elsewhere).
            claim: the queue's claim, if the caller holds it already (``wait_for_queue``);
                the device owns it from here on.

        Raises:
            StcpConfigError: device missing, not a persistent TUN device, held by another
                process, or no permission; the message says what to do.
        """
        await trio.lowlevel.checkpoint()
        ifname = _ifreq_name(name)
        # TUNSETIFF on a missing name would *create* a new, non-persistent device; look
        # first, and check IFF_PERSIST afterwards to close the race.
        if not device_exists(name):
            raise missing_device_error(name)
        if queue < 0:
            raise ValueError("queue must be >= 0")
        if claim is None:
            claim = queue_claim(name, queue)
        fd = -1
        try:
            fd = _open_tun_fd(tun_path)
            if offload and not _tun_features(fd) & IFF_VNET_HDR:
                logger.warning("TUN driver has no IFF_VNET_HDR: %s runs without offloads", name)
                offload = False
            attach_flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            try:
                try:
                    fcntl.ioctl(
                        fd, TUNSETIFF, _IFREQ_FLAGS.pack(ifname, attach_flags | IFF_MULTI_QUEUE)
                    )
                except OSError as exc:
                    # EINVAL: a single-queue device (made by an older `stcp net up` or
                    # another tool), which refuses a multi-queue attach; or not TUN at all.
                    if exc.errno != errno.EINVAL or queue:
                        raise
                    fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(ifname, attach_flags))
                flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ_FLAGS.size)))[1]
            except OSError as exc:
                if exc.errno == errno.EINVAL and queue:
                    raise StcpConfigError(
                        f"TUN device {name} has a single queue, so it takes one worker: "
                        f"recreate it with `stcp net down --dev {name}` and `stcp net up`"
                    ) from exc
                raise _device_error(name, exc) from exc
            if not flags & IFF_PERSIST:
                raise missing_device_error(name)
            gso = _configure_offloads(fd, name, offload=offload, gso=gso)
            if mtu is not None:
                _set_device_mtu(name, mtu)
            device_mtu = get_device_mtu(name)
            await _wait_running(name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            claim.close()
            raise
        logger.info(
            "attached to TUN device %s (mtu %d, offload %s%s)",
            name,
            device_mtu,
            "on" if offload else "off",
            ", gso" if gso else "",
        )
        device = cls(fd, name, device_mtu, offload=offload, gso=gso, tx_gso=tx_gso)
        device.queue = queue
        device._claim = claim
        return device

    @classmethod
    def adopt(cls, handed: Handed, name: str, *, queue: int, claim: socket.socket) -> TunDevice:
        """The queue a serving process handed over (``link/handover.py``), set up as it
        had it, once this process holds the queue's ``claim`` (that process is gone)."""
        device = cls(
            handed.fd, name, handed.mtu,
            offload=handed.offload, gso=handed.gso, tx_gso=handed.tx_gso,
        )  # fmt: skip
        device.queue = queue
        device._claim = claim
        logger.info("took over TUN device %s (queue %d) from the process before", name, queue)
        return device

    def handover_settings(self) -> dict[str, object]:
        """What a standby needs besides the descriptor (``link/handover.py``)."""
        return {
            "mtu": self._mtu,
            "offload": self.offload,
            "gso": self.gso,
            "tx_gso": self.tx_gso_max > 0,
        }

    @property
    def name(self) -> str:
        """The interface name."""
        return self._name

    @property
    def mtu(self) -> int:
        """The device MTU: the largest IP packet (header included) it carries."""
        return self._mtu

    @property
    def offload(self) -> bool:
        """Whether packets carry a virtio-net header (checksum offload on)."""
        return self._vnet_hdr_len != 0

    def fileno(self) -> int:
        """The TUN file descriptor (non-blocking)."""
        return self._fd

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        """Wait for at least one packet, then read until EAGAIN or ``max_packets``.

        Returns views of fresh ``bytes`` objects (bare IP packets), never reused.
        """
        if self._closed:
            raise trio.ClosedResourceError("TUN device is closed")
        if max_packets < 1:
            raise ValueError("max_packets must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        read = self._read_offload if self._vnet_hdr_len else self._read
        waited = False
        while True:
            try:
                out = read(max_packets)
            except OSError as exc:
                if exc.errno == errno.EBADF and self._closed:
                    raise trio.ClosedResourceError("TUN device was closed") from None
                if exc.errno in (errno.EBADFD, errno.ENODEV, errno.ENXIO):
                    # (what a read gets once `ip link del` / `stcp net down` removed it)
                    raise StcpConfigError(
                        f"TUN device {self._name} was removed while serving (stcp net "
                        "down?): its connections stay in the store; `stcp net up` it "
                        "again and start the server"
                    ) from exc
                raise
            if out:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return out
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("TUN device was closed") from None
            if self._closed:
                raise trio.ClosedResourceError("TUN device was closed")
            waited = True

    def _read(self, max_packets: int) -> list[memoryview]:
        """Read up to ``max_packets`` bare IP packets without blocking."""
        read = self._file.read
        size = self._buffer_size
        out: list[memoryview] = []
        i = 0
        rx_bytes = 0
        while i < max_packets:
            data = read(size)
            if data is None:  # EAGAIN: FileIO.read returns None on a non-blocking fd
                break
            out.append(memoryview(data))
            rx_bytes += len(data)
            i += 1
        self.counters.rx_packets += i
        self.counters.rx_bytes += rx_bytes
        return out

    def _read_offload(self, max_packets: int) -> list[memoryview]:
        """Read up to ``max_packets`` packets with virtio-net headers without blocking.

        Strips the header; verifies the TCP checksum of a packet the kernel neither left
        partial (``NEEDS_CSUM``) nor verified (``DATA_VALID``), and drops a bad one.
        At most ``2 * max_packets`` reads, so a flood of bad packets cannot hold the loop.
        """
        read = self._file.read
        size = self._buffer_size
        hdr_len = self._vnet_hdr_len
        counters = self.counters
        out: list[memoryview] = []
        i = 0
        rx_bytes = 0
        gso_packets = 0
        for _ in range(2 * max_packets):
            data = read(size)
            if data is None:
                break
            packet = memoryview(data)[hdr_len:]
            if not data[0] & 3:  # neither VIRTIO_NET_HDR_F_NEEDS_CSUM nor _DATA_VALID
                if rx_tcp_checksum_bad(packet):
                    counters.rx_bad_checksum += 1
                    continue
            elif data[1]:  # gso_type: a TCP super-segment
                gso_packets += 1
            out.append(packet)
            rx_bytes += len(packet)
            i += 1
            if i == max_packets:
                break
        counters.rx_packets += i
        counters.rx_bytes += rx_bytes
        counters.rx_gso_packets += gso_packets
        return out

    accepts_split_packets = True  # (headers, payload) pairs go out with one writev

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        """Write each packet with one ``write``; wait while the device would block.

        With offload, each packet is written with its virtio-net header in one
        ``writev`` (``link/offload.py`` ``tx_vnet_header``; ``tx_gso_vnet_header`` for
        a ``(headers, payload, gso_size)`` super-segment). A packet the kernel refuses
        (e.g. ``EINVAL``) is counted in ``tx_errors`` and skipped; nothing is dropped
        silently.
        """
        if self._closed:
            raise trio.ClosedResourceError("TUN device is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        total = len(packets)
        done = self._write_from(packets, 0)
        if done == total:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waits = 0
        while done < total:
            waits += 1
            if waits > _MAX_BLOCKED_WRITE_WAITS:
                self.counters.tx_errors += total - done
                logger.warning(
                    "TUN %s stayed unwritable; %d packets counted as errors",
                    self._name,
                    total - done,
                )
                return
            try:
                await trio.lowlevel.wait_writable(self._fd)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("TUN device was closed") from None
            done = self._write_from(packets, done)

    def send_batch_nowait(self, packets: Sequence[OutPacket]) -> int:
        """Write what the device takes now, without a schedule point (``link/base.py``).

        Returns:
            How many of ``packets`` were handled (written, or refused and counted);
            the caller passes the rest to ``send_batch``. A TUN write practically never
            blocks, so this is all of them: the runtime's transmit task then needs no
            extra trip through trio's scheduler per round.
        """
        if self._closed:
            raise trio.ClosedResourceError("TUN device is closed")
        return self._write_from(packets, 0)

    def _write_from(self, packets: Sequence[OutPacket], done: int) -> int:
        """Write ``packets[done:]`` until one would block; returns the new ``done``."""
        fd = self._fd
        write = os.write
        writev = os.writev
        hdr_len = self._vnet_hdr_len
        counters = self.counters
        total = len(packets)
        tx_bytes = 0
        gso_packets = 0
        written = 0
        while done < total:
            try:
                # Fast path: a plain loop; a TUN write practically never blocks.
                if hdr_len:
                    for i in range(done, total):
                        packet = packets[i]
                        if isinstance(packet, tuple):  # (headers, payload): no join, no copy
                            head = packet[0]
                            body = packet[1]
                            if len(packet) == 3:  # a super-segment: (headers, payload, gso_size)
                                vnet = tx_gso_vnet_header(head, packet[2])
                                tx_bytes += writev(fd, (vnet, head, body)) - hdr_len
                                gso_packets += 1
                            else:
                                vnet = tx_vnet_header(head, len(head) + len(body))
                                tx_bytes += writev(fd, (vnet, head, body)) - hdr_len
                        else:
                            tx_bytes += writev(fd, (tx_vnet_header(packet), packet)) - hdr_len
                        done = i + 1
                        written += 1
                else:
                    for i in range(done, total):
                        packet = packets[i]
                        if isinstance(packet, tuple):
                            tx_bytes += writev(fd, packet[:2])
                        else:
                            tx_bytes += write(fd, packet)
                        done = i + 1
                        written += 1
            except BlockingIOError:
                counters.tx_blocked += 1
                break
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("TUN device was closed") from None
                counters.tx_errors += 1
                logger.debug(
                    "TUN %s refused a %d-byte packet: %s", self._name, len(packets[done]), exc
                )
                done += 1
        counters.tx_packets += written
        counters.tx_bytes += tx_bytes
        counters.tx_gso_packets += gso_packets
        return done

    async def aclose(self) -> None:
        """Detach from the device (it stays: it is persistent). Idempotent."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._file.close()
            os.close(self._fd)
            if self._claim is not None:
                self._claim.close()
        await trio.lowlevel.checkpoint()
