"""A deterministic simulated IP network for tests: ``SimNetwork`` and its ``SimLink`` ends.

Theory of operation:
    A ``SimNetwork`` connects any number of ``SimLink`` endpoints, each a
    ``PacketDevice`` that owns one or more IP addresses. A packet sent on a link is routed
    by its IP destination address (a two-field header peek: version nibble, then bytes
    16:20 for IPv4 or 24:40 for IPv6 -- no dependency on ``wire``) and scheduled for
    delivery ``delay`` (+ jitter) seconds later on trio's clock, so
    ``trio.testing.MockClock(autojump_threshold=0)`` runs a long transfer in no wall time.

    Faults are drawn per packet from one ``random.Random(seed)`` in a fixed order (loss,
    corruption, duplication, reordering, jitter): the same seed and the same sequence of
    sends give the same deliveries, at the same virtual times (trio ``test_dtls.py``
    ``FakeNet.route_packet``; smoltcp ``phy/fault_injector.rs``).

    In-flight packets are queued per *destination address*, not per link object, like a
    persistent TUN device: when a server's link is closed (the process "crashes") and a
    new link attaches to the same address, packets still in flight reach the new link,
    and packets that arrived while nobody was attached are dropped silently (counted as
    ``no-listener``), as the kernel does for a persistent TUN device nobody holds.

    A ``tap`` callback sees every packet when it is sent and when it is delivered, with a
    running packet index, so a test can crash a server right after packet *k* or drop
    that one packet (return ``TapVerdict.DROP`` at the ``"send"`` phase).
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import trio

from .base import OutPacket

__all__ = [
    "SimCounters",
    "SimLink",
    "SimNetwork",
    "TapEvent",
    "TapVerdict",
]


@dataclass(slots=True)
class SimCounters:
    """Per-link packet counters.

    ``sent``, ``dropped``, ``duplicated``, ``reordered`` and ``corrupted`` count packets
    this link *sent*; ``delivered`` counts packets delivered *to* this link.
    ``dropped_by_reason`` splits ``dropped`` by reason (``loss``, ``partition``,
    ``unroutable``, ``too-big``, ``tap``, ``no-listener``).
    """

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    dropped_by_reason: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.dropped_by_reason[reason] += 1


class TapVerdict(enum.Enum):
    """What a tap wants done with a packet at the ``"send"`` phase."""

    PASS = "pass"
    DROP = "drop"


class TapEvent(NamedTuple):
    """One packet seen by the tap.

    Attributes:
        phase: ``"send"`` when a link hands the packet to the network (before faults),
            ``"deliver"`` when ``recv_batch`` hands it to the receiving link.
        number: running count of packets seen in this phase on the network, from 1.
        now: trio's clock at this moment.
        src: the sending link's first address (as text).
        dst: the destination address (as text; ``""`` if the header was unreadable).
        packet: the packet bytes (a copy; do not keep large numbers of them).
    """

    phase: Literal["send", "deliver"]
    number: int
    now: float
    src: str
    dst: str
    packet: bytes


Tap = Callable[[TapEvent], "TapVerdict | None"]


class _InFlight(NamedTuple):
    deliver_at: float
    order: int  # global send order: makes ties deterministic
    packet: bytes | bytearray
    sender: SimCounters
    src: str


def _peek_dst_untrusted(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The IP destination address of ``packet`` (4 or 16 bytes), or None if unreadable.

    RFC 791 §3.1 (destination at octets 16-19) and RFC 8200 §3 (octets 24-39).
    """
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        return bytes(packet[16:20])
    if version == 6 and len(packet) >= 40:
        return bytes(packet[24:40])
    return None


def _address_key(address: str | bytes) -> bytes:
    if isinstance(address, bytes):
        if len(address) not in (4, 16):
            raise ValueError(f"packed address must have 4 or 16 bytes, not {len(address)}")
        return address
    return ipaddress.ip_address(address).packed


def _address_text(key: bytes) -> str:
    return str(ipaddress.ip_address(key))


class SimNetwork:
    """A seeded, lossy, reordering IP network between ``SimLink`` endpoints.

    Args:
        seed: seed of the network's ``random.Random``.
        loss: probability that a sent packet is dropped.
        duplicate: probability that a packet is delivered twice (second copy gets its own
            delay).
        reorder: probability that a packet is held back by ``reorder_delay`` extra seconds,
            so packets sent after it overtake it.
        delay: one-way delay in seconds.
        jitter: extra delay drawn uniformly from ``[0, jitter)`` per packet.
        corrupt: probability that one random bit of the packet is flipped.
        mtu: largest packet a link may send; larger ones are dropped (``too-big``).
        reorder_delay: extra delay of a reordered packet; default ``2 * delay + jitter``
            (at least 1 ms).
        tap: optional callback, see ``TapEvent``.
    """

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.001,
        jitter: float = 0.0,
        corrupt: float = 0.0,
        mtu: int = 1500,
        reorder_delay: float | None = None,
        tap: Tap | None = None,
    ) -> None:
        for name, p in (
            ("loss", loss),
            ("duplicate", duplicate),
            ("reorder", reorder),
            ("corrupt", corrupt),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        if mtu < 20:
            raise ValueError("mtu must be >= 20")
        self.seed = seed
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.delay = delay
        self.jitter = jitter
        self.corrupt = corrupt
        self.mtu = mtu
        self.reorder_delay = (
            reorder_delay if reorder_delay is not None else max(2 * delay + jitter, 0.001)
        )
        self.tap: Tap | None = tap
        self._rng = random.Random(seed)
        self._order = 0
        self._sent_index = 0
        self._delivered_index = 0
        # Per destination address: heap of packets in flight; survives link restarts.
        self._queues: dict[bytes, list[_InFlight]] = {}
        self._owners: dict[bytes, SimLink] = {}
        self._blocked: set[tuple[bytes, bytes]] = set()
        self._links: list[SimLink] = []
        self.counters = SimCounters()  # network totals

    # -- topology ------------------------------------------------------------------------

    def attach(self, *addresses: str | bytes) -> SimLink:
        """Create a link that owns ``addresses`` (IPv4 and/or IPv6).

        An address may be re-attached after its previous link was closed (a restarted
        server); packets still in flight to it are then delivered to the new link.

        Raises:
            ValueError: no address, or an address owned by an open link.
        """
        if not addresses:
            raise ValueError("a link needs at least one address")
        keys = tuple(_address_key(a) for a in addresses)
        for key in keys:
            if key in self._owners:
                raise ValueError(f"address {_address_text(key)} is owned by an open link")
        link = SimLink(self, keys)
        now = trio.current_time()
        for key in keys:
            self._owners[key] = link
            queue = self._queues.setdefault(key, [])
            # Packets that arrived while nobody held the address were dropped then.
            while queue and queue[0].deliver_at < now:
                lost = heapq.heappop(queue)
                lost.sender.drop("no-listener")
                self.counters.drop("no-listener")
        self._links.append(link)
        return link

    def links(self) -> list[SimLink]:
        """Every link ever attached, in attach order (closed ones included)."""
        return list(self._links)

    def partition(self, a: SimLink | str | Iterable[str], b: SimLink | str | Iterable[str]) -> None:
        """Drop every packet sent between ``a`` and ``b`` (both directions) until healed.

        ``a`` and ``b`` are links or addresses; partitions are by address, so they also
        apply to a link that later re-attaches to the same address.
        """
        for ka in self._keys_of(a):
            for kb in self._keys_of(b):
                self._blocked.add((ka, kb))
                self._blocked.add((kb, ka))

    def heal(
        self,
        a: SimLink | str | Iterable[str] | None = None,
        b: SimLink | str | Iterable[str] | None = None,
    ) -> None:
        """Remove the partition between ``a`` and ``b``, or every partition if omitted."""
        if a is None or b is None:
            self._blocked.clear()
            return
        for ka in self._keys_of(a):
            for kb in self._keys_of(b):
                self._blocked.discard((ka, kb))
                self._blocked.discard((kb, ka))

    def _keys_of(self, x: SimLink | str | Iterable[str]) -> tuple[bytes, ...]:
        if isinstance(x, SimLink):
            return x.address_keys
        if isinstance(x, str):
            return (_address_key(x),)
        return tuple(_address_key(a) for a in x)

    # -- data path -----------------------------------------------------------------------

    def _route(self, link: SimLink, packets: Sequence[bytes | bytearray | memoryview]) -> None:
        now = trio.current_time()
        rng = self._rng
        src_text = link.addresses[0]
        for pkt in packets:
            counters = link.counters
            counters.sent += 1
            self.counters.sent += 1
            data = bytes(pkt)  # the sender may reuse its buffer
            dst = _peek_dst_untrusted(data)
            if self.tap is not None:
                self._sent_index += 1
                verdict = self.tap(
                    TapEvent(
                        "send",
                        self._sent_index,
                        now,
                        src_text,
                        _address_text(dst) if dst is not None else "",
                        data,
                    )
                )
                if verdict is TapVerdict.DROP:
                    self._drop(counters, "tap")
                    continue
            if dst is None or dst not in self._queues:
                self._drop(counters, "unroutable")
                continue
            if len(data) > self.mtu:
                self._drop(counters, "too-big")
                continue
            if any((src, dst) in self._blocked for src in link.address_keys):
                self._drop(counters, "partition")
                continue
            if self.loss and rng.random() < self.loss:
                self._drop(counters, "loss")
                continue
            payload: bytes | bytearray = data
            if self.corrupt and rng.random() < self.corrupt:
                corrupted = bytearray(data)
                bit = rng.randrange(len(corrupted) * 8)
                corrupted[bit >> 3] ^= 1 << (bit & 7)
                payload = corrupted
                counters.corrupted += 1
                self.counters.corrupted += 1
            copies = 1
            if self.duplicate and rng.random() < self.duplicate:
                copies = 2
                counters.duplicated += 1
                self.counters.duplicated += 1
            for copy in range(copies):
                deliver_at = now + self.delay
                if self.reorder and rng.random() < self.reorder:
                    deliver_at += self.reorder_delay
                    if copy == 0:
                        counters.reordered += 1
                        self.counters.reordered += 1
                if self.jitter:
                    deliver_at += rng.random() * self.jitter
                self._order += 1
                heapq.heappush(
                    self._queues[dst],
                    _InFlight(deliver_at, self._order, payload, counters, src_text),
                )
            owner = self._owners.get(dst)
            if owner is not None:
                owner._wake()

    def _drop(self, counters: SimCounters, reason: str) -> None:
        counters.drop(reason)
        self.counters.drop(reason)

    def _detach(self, link: SimLink) -> None:
        for key in link.address_keys:
            if self._owners.get(key) is link:
                del self._owners[key]

    def _next_due(self, link: SimLink) -> tuple[float, bytes] | None:
        """Earliest (deliver_at, address key) over the link's addresses."""
        best: tuple[float, int, bytes] | None = None
        for key in link.address_keys:
            queue = self._queues[key]
            if queue:
                head = queue[0]
                if best is None or (head.deliver_at, head.order) < best[:2]:
                    best = (head.deliver_at, head.order, key)
        return None if best is None else (best[0], best[2])

    def _pop_ready(self, link: SimLink, now: float, max_packets: int) -> list[memoryview]:
        out: list[memoryview] = []
        while len(out) < max_packets:
            due = self._next_due(link)
            if due is None or due[0] > now:
                break
            item = heapq.heappop(self._queues[due[1]])
            if self.tap is not None:
                self._delivered_index += 1
                self.tap(
                    TapEvent(
                        "deliver",
                        self._delivered_index,
                        now,
                        item.src,
                        _address_text(due[1]),
                        bytes(item.packet),
                    )
                )
            out.append(memoryview(bytearray(item.packet)))
        link.counters.delivered += len(out)
        self.counters.delivered += len(out)
        return out


class SimLink:
    """One endpoint of a ``SimNetwork`` (a ``PacketDevice``); create with ``attach``."""

    def __init__(self, network: SimNetwork, address_keys: tuple[bytes, ...]) -> None:
        self._network = network
        self.address_keys = address_keys
        self.addresses = tuple(_address_text(k) for k in address_keys)
        self.counters = SimCounters()
        self._closed = False
        self._wakeup = trio.Event()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SimLink {','.join(self.addresses)} {state}>"

    @property
    def mtu(self) -> int:
        """The network's MTU."""
        return self._network.mtu

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` was called."""
        return self._closed

    def _wake(self) -> None:
        self._wakeup.set()

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        """Wait until at least one packet is due, then return every due packet.

        At most ``max_packets`` are returned, in delivery order.
        """
        if max_packets < 1:
            raise ValueError("max_packets must be >= 1")
        while True:
            if self._closed:
                raise trio.ClosedResourceError("SimLink is closed")
            now = trio.current_time()
            out = self._network._pop_ready(self, now, max_packets)
            if out:
                await trio.lowlevel.checkpoint()
                return out
            due = self._network._next_due(self)
            wake_at = due[0] if due is not None else math.inf
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            with trio.move_on_at(wake_at):
                await self._wakeup.wait()

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        """Hand ``packets`` to the network (never blocks beyond a checkpoint)."""
        if self._closed:
            raise trio.ClosedResourceError("SimLink is closed")
        await trio.lowlevel.checkpoint()
        joined = [b"".join(p[:2]) if isinstance(p, tuple) else p for p in packets]
        self._network._route(self, joined)

    async def aclose(self) -> None:
        """Close the link and release its addresses (a new link may attach to them)."""
        if not self._closed:
            self._closed = True
            self._network._detach(self)
            self._wakeup.set()
        await trio.lowlevel.checkpoint()
