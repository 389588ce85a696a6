"""SACK against the Linux kernel, with segments lost between the stack and the wire.

A ``LossyDevice`` between the stack and the TUN device drops every Nth TCP segment
that carries data, in one direction, up to a limit (MTU 1500, no offload: one segment
per packet). Upload: the kernel sends, our ACKs carry SACK blocks for what came after
each hole, and the kernel recovers with them -- its own counter ``TcpExt
TCPSackRecovery`` (this namespace's ``/proc/net/netstat``) says so, and stays 0 when the
stack does not offer SACK. Download: the kernel receives with holes and SACKs, and the
stack resends the holes it names (``sack_retransmit``). Every byte is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from kernel_peer import hashing_discard, run_kernel_peer, stack_on
from netns_fixtures import TunNet

from stcp_framework import Stream
from stcp_framework.link.base import OutPacket
from stcp_framework.link.pcap import HEADERS_SNAPLEN
from stcp_framework.services import chargen, chargen_bytes
from stcp_framework.tcp.config import TcpConfig

SIZE = 20 << 20
EVERY = 97  # drop the 97th data segment and the 7th after it, and so on (a prime: not
GAP = 7  # in step with any burst size): two holes in one window, as NewReno hates
LIMIT = 40  # at most this many drops per direction
TRANSFER_TIMEOUT = 60.0

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def tcp_payload_len(packet: bytes | memoryview) -> int:
    """Bytes of TCP payload in a bare IPv4/IPv6 packet (0 for anything else)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != 6 or len(packet) < ihl + 20:
            return 0
        total = int.from_bytes(packet[2:4], "big")
        return total - ihl - (packet[ihl + 12] >> 4) * 4
    if packet[6] != 6 or len(packet) < 60:
        return 0
    return int.from_bytes(packet[4:6], "big") - (packet[52] >> 4) * 4


class PassThrough:
    """A device in front of ``inner``: everything but what a subclass overrides goes to
    ``inner`` (MTU, offload flags, ``recv_batch``, ``aclose``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "send_batch_nowait":  # (the runtime would write past send_batch)
            raise AttributeError(name)
        return getattr(self.inner, name)


class LossyDevice(PassThrough):
    """Drops data segments of one direction (``"rx"``: on their way to the stack;
    ``"tx"``: on their way out): every ``every``-th and the ``GAP``-th after it,
    ``limit`` at most -- each ``times`` times (its first transmission, and with 2 its
    first resend too)."""

    def __init__(self, inner: Any, direction: str, every: int, limit: int, times: int = 1) -> None:
        super().__init__(inner)
        self.direction = direction
        self.every = every
        self.limit = limit
        self.times = times
        self.seen = 0
        self.dropped = 0  # segments lost (a segment lost twice counts once)
        self._lost: dict[int, int] = {}  # sequence number -> transmissions dropped

    def _drop(self, packet: Any) -> bool:
        """Whether to drop this packet. A segment dropped ``times`` times passes the
        next time, so the run does not depend on where the resends fall among them."""
        head = packet[0] if isinstance(packet, tuple) else packet
        size = len(packet[1]) if isinstance(packet, tuple) else tcp_payload_len(memoryview(packet))
        if size <= 0:
            return False
        ihl = (head[0] & 0x0F) * 4 if head[0] >> 4 == 4 else 40
        seq = int.from_bytes(head[ihl + 4 : ihl + 8], "big")
        if seq in self._lost:
            if self._lost[seq] >= self.times:
                return False
            self._lost[seq] += 1
            return True
        if self.dropped >= self.limit:
            return False
        self.seen += 1
        if self.seen % self.every not in (0, GAP):
            return False
        self._lost[seq] = 1
        self.dropped += 1
        return True

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        packets: list[memoryview] = await self.inner.recv_batch(max_packets)
        if self.direction != "rx":
            return packets
        return [p for p in packets if not self._drop(p)]

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        if self.direction == "tx":
            packets = [p for p in packets if not self._drop(p)]
        if packets:
            await self.inner.send_batch(packets)


class TailDrop(PassThrough):
    """Drops the first transmission of the last ``count`` data segments of a reply of
    ``size`` bytes that we send (their sequence numbers follow from our SYN-ACK's)."""

    def __init__(self, inner: Any, size: int, count: int, mss: int) -> None:
        super().__init__(inner)
        self.offsets = {size - i * mss for i in range(1, count + 1)}  # to drop once
        self.dropped: list[int] = []
        self.iss: int | None = None

    def _drop(self, packet: Any) -> bool:
        head = packet[0] if isinstance(packet, tuple) else packet
        ihl = (head[0] & 0x0F) * 4 if head[0] >> 4 == 4 else 40
        seq = int.from_bytes(head[ihl + 4 : ihl + 8], "big")
        if head[ihl + 13] & 0x02:  # SYN
            self.iss = seq
            return False
        size = len(packet[1]) if isinstance(packet, tuple) else tcp_payload_len(memoryview(packet))
        if size <= 0 or self.iss is None:
            return False
        offset = (seq - self.iss - 1) & 0xFFFFFFFF
        if offset not in self.offsets:
            return False
        self.offsets.discard(offset)
        self.dropped.append(offset)
        return True

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        packets = [p for p in packets if not self._drop(p)]
        if packets:
            await self.inner.send_batch(packets)


class LateSegments(PassThrough):
    """Holds back every ``every``-th data segment we send (``limit`` at most) until our
    resend of it goes out, then sends the original just before the resend: the peer
    gets three later segments first (its SACKs start our fast retransmit), then the late
    original, then the needless resend. The segments after a held one leave 2 ms
    later, so the resend's timestamp (1 ms clock) is always newer than the original's,
    however fast the kernel's SACKs come back."""

    def __init__(self, inner: Any, every: int, limit: int) -> None:
        super().__init__(inner)
        self.every = every
        self.limit = limit
        self.seen = 0
        self.held: dict[int, Any] = {}  # sequence number -> the original packet
        self.late = 0
        self.next_seq: int | None = None  # past the highest data sequence number sent

    def _first_sending(self, seq: int, size: int) -> bool:
        """True for new data (not a resend, say a tail loss probe: one held at the end
        of the transfer would have no resend after it to let it go)."""
        if self.next_seq is not None and (seq - self.next_seq) % 2**32 >= 2**31:
            return False
        self.next_seq = (seq + size) % 2**32
        return True

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        out: list[Any] = []
        stall = False
        for packet in packets:
            head = packet[0] if isinstance(packet, tuple) else packet
            size = (
                len(packet[1]) if isinstance(packet, tuple) else tcp_payload_len(memoryview(packet))
            )
            ihl = (head[0] & 0x0F) * 4 if head[0] >> 4 == 4 else 40
            seq = int.from_bytes(head[ihl + 4 : ihl + 8], "big")
            covered = [h for h in self.held if size > 0 and (h - seq) % 2**32 < size]
            if covered:
                # the late original, then the resend (which may start before it: a
                # resend of a hole that runs into the held segment)
                out.extend(self.held.pop(h) for h in covered)
            elif size > 0 and self.late < self.limit and self._first_sending(seq, size):
                self.seen += 1
                if self.seen % self.every == 0:
                    self.held[seq] = packet
                    self.late += 1
                    stall = True
                    continue
            out.append(packet)
        if stall:
            await trio.sleep(0.002)
        if out:
            await self.inner.send_batch(out)


class AckBlackout(PassThrough):
    """Drops every packet we send for ``seconds`` once ``after`` went out: longer than
    the peer's retransmission timeout, so it resends data we have (a spurious timeout)
    and we answer with a D-SACK block (RFC 2883)."""

    def __init__(self, inner: Any, after: int, seconds: float) -> None:
        super().__init__(inner)
        self.after = after
        self.seconds = seconds
        self.sent = 0
        self.dropped = 0
        self.until: float | None = None

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        now = trio.current_time()
        kept = []
        for packet in packets:
            self.sent += 1
            if self.until is None and self.sent == self.after:
                self.until = now + self.seconds
            if self.until is not None and now < self.until:
                self.dropped += 1
                continue
            kept.append(packet)
        if kept:
            await self.inner.send_batch(kept)


class LateAcks(PassThrough):
    """Holds every packet the peer sends for ``seconds`` once ``after`` came in, then
    hands them all over in order: the ACK clock stops for longer than our
    retransmission timeout, though nothing is lost -- a spurious timeout (a delay
    spike, or a stalled process)."""

    def __init__(self, inner: Any, after: int, seconds: float) -> None:
        super().__init__(inner)
        self.after = after
        self.seconds = seconds
        self.received = 0
        self.held = 0

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        batch: list[memoryview] = await self.inner.recv_batch(max_packets)
        self.received += len(batch)
        if self.held or self.received < self.after:
            return batch
        with trio.move_on_after(self.seconds):
            while True:
                batch.extend(await self.inner.recv_batch(max_packets))
        self.held = len(batch)
        return batch


def tcp_ext() -> dict[str, int]:
    """This network namespace's ``TcpExt`` counters (``/proc/net/netstat``)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    raise AssertionError("no TcpExt in /proc/net/netstat")


def stack_behind(tun: TunNet, pcap_path: Path, wrap: Any, **options: Any) -> Any:
    """``stack_on`` the fixture's device without offload (one segment per packet), with
    ``wrap`` between the stack and the recorded device."""
    return stack_on(
        tun, pcap_path, snaplen=HEADERS_SNAPLEN, tun_options={"offload": False}, wrap=wrap,
        **options,
    )  # fmt: skip


def lossy(direction: str) -> tuple[list[LossyDevice], Any]:
    made: list[LossyDevice] = []

    def wrap(inner: Any) -> LossyDevice:
        made.append(LossyDevice(inner, direction, EVERY, LIMIT))
        return made[-1]

    return made, wrap


async def download(
    tun_net: TunNet,
    pcap_path: Path,
    wrap: Any,
    size: int,
    send: Any = chargen,
    config: TcpConfig | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The kernel client reads ``size`` bytes of chargen from port 19, where ``send``
    (a service) writes them through ``wrap``; returns its result and the connection's
    counters, read when the handler ends (once the client's close arrives)."""
    counters: dict[str, int] = {}
    done = trio.Event()

    async def counted(stream: Stream) -> None:
        try:
            await send(stream)
        finally:
            conn = stream._flow.conn
            counters.update(conn.counters)
            counters["ssthresh_at_end"] = conn.cc.ssthresh
            done.set()

    async with (
        stack_behind(tun_net, pcap_path, wrap, config=config) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, counted, 19)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("chargen", tun_net.stack_addr, 19, size)
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert result["error"] is None, result
    assert result["received"] == size and result["mismatch_at"] is None
    return result, counters


@pytest.mark.parametrize(
    ("sack", "aoc"), [(True, False), (False, False), (True, True)],
    ids=["sack", "no-sack", "ack-on-commit"],
)  # fmt: skip
async def test_kernel_sender_recovers_with_our_sack_blocks(
    tun_net: TunNet, pcap_path: Path, sack: bool, aoc: bool
) -> None:
    """With ack-on-commit too: its blocks wait for a spill of the uncommitted bytes below
    the hole, so they never lie beside bytes its ACK leaves out."""
    received: list[tuple[int, str]] = []
    counters: dict[str, int] = {}
    devices, wrap = lossy("rx")
    before = tcp_ext()
    mode = {"durability": "ack-on-commit"} if aoc else {}
    async with (
        stack_behind(
            tun_net, pcap_path, wrap, config=TcpConfig(mss=65535, sack=sack), **mode
        ) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, hashing_discard(received, counters), 9)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("send", tun_net.stack_addr, 9, SIZE, seed=5)
        nursery.cancel_scope.cancel()
    after = tcp_ext()
    sack_recoveries = after["TCPSackRecovery"] - before["TCPSackRecovery"]
    print(
        f"\nupload, {devices[0].dropped} segments lost, sack={sack}, ack-on-commit={aoc}:"
        f" {result['seconds']:.2f} s,"
        f" kernel recoveries SACK {sack_recoveries}"
        f" Reno {after['TCPRenoRecovery'] - before['TCPRenoRecovery']},"
        f" timeouts {after['TCPTimeouts'] - before['TCPTimeouts']}"
    )  # (shown with pytest -s)
    assert received == [(SIZE, result["sha256"])]
    assert devices[0].dropped == LIMIT
    if sack:
        assert counters.get("sack_ack_sent", 0) > 0
        assert sack_recoveries > 0  # the kernel used our blocks
        assert after["TCPSACKReneging"] == before["TCPSACKReneging"]
        if aoc:
            assert counters.get("rx_spill", 0) > 0
    else:
        assert "sack_ack_sent" not in counters
        assert sack_recoveries == 0
        assert after["TCPRenoRecovery"] > before["TCPRenoRecovery"]


async def test_we_resend_the_holes_the_kernel_sacks(tun_net: TunNet, pcap_path: Path) -> None:
    devices, wrap = lossy("tx")
    before = tcp_ext()
    result, counters = await download(tun_net, pcap_path, wrap, SIZE)
    after = tcp_ext()
    print(
        f"\ndownload, {devices[0].dropped} segments lost: {result['seconds']:.2f} s, "
        + ", ".join(
            f"{k} {v}"
            for k, v in sorted(counters.items())
            if "ack" in k or "retr" in k or "rto" in k or "dup" in k
        )
    )  # (shown with pytest -s)
    assert devices[0].dropped == LIMIT
    assert after["TCPOFOQueue"] > before["TCPOFOQueue"]  # the kernel saw the holes
    assert counters.get("sack_blocks_received", 0) > 0
    # the second hole of each pair is resent from the kernel's SACK blocks, without
    # waiting for the partial ACK of the first one's retransmission
    assert counters.get("sack_retransmit", 0) >= LIMIT // 4
    # One resend per lost segment; more only after a timeout (which a starved process
    # can need: seen with two busy loops on the 2 cores, never on a quiet machine) or
    # a tail loss probe that resent a last segment (a late ACK looks like a loss).
    resent = counters["retransmit"] - counters.get("probe_retransmit", 0)
    assert resent == LIMIT or counters.get("rto", 0) > 0


async def test_a_spurious_retransmission_gets_a_dsack_the_kernel_understands(
    tun_net: TunNet, pcap_path: Path
) -> None:
    received: list[tuple[int, str]] = []
    counters: dict[str, int] = {}
    made: list[AckBlackout] = []

    def wrap(inner: Any) -> AckBlackout:
        made.append(AckBlackout(inner, after=20, seconds=0.6))
        return made[-1]

    before = tcp_ext()
    async with stack_behind(tun_net, pcap_path, wrap) as stack, trio.open_nursery() as nursery:
        await nursery.start(stack.serve, hashing_discard(received, counters), 9)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("send", tun_net.stack_addr, 9, SIZE, seed=6)
        nursery.cancel_scope.cancel()
    after = tcp_ext()
    print(
        f"\nblackout of {made[0].dropped} of {made[0].sent} packets: kernel timeouts"
        f" {after['TCPTimeouts'] - before['TCPTimeouts']}, D-SACKs received"
        f" {after['TCPDSACKRecv'] - before['TCPDSACKRecv']}, ours sent {counters.get('dsack_sent')}"
    )  # (shown with pytest -s)
    assert result["tail"] == "" and received == [(SIZE, result["sha256"])]
    assert made[0].dropped > 0
    assert after["TCPTimeouts"] > before["TCPTimeouts"]  # it did resend what we had
    assert counters.get("dsack_sent", 0) > 0
    assert after["TCPDSACKRecv"] > before["TCPDSACKRecv"]  # and read our D-SACK as one


async def test_a_lost_tail_is_repaired_by_a_probe_not_a_timeout(
    tun_net: TunNet, pcap_path: Path
) -> None:
    """A 20-segment reply whose last two segments are lost: nothing after them can
    bring duplicate ACKs. The tail loss probe (RFC 8985) resends the last, the kernel
    SACKs it, and that one duplicate ACK starts the fast retransmit of the other
    (Early Retransmit, RFC 5827): no retransmission timeout (200 ms at least)."""
    mss = 1448  # MTU 1500 without offload, timestamps on
    size = 20 * mss
    made: list[TailDrop] = []

    def wrap(inner: Any) -> TailDrop:
        made.append(TailDrop(inner, size, 2, mss))
        return made[-1]

    async def reply(stream: Stream) -> None:
        await stream.send_all(chargen_bytes(0, size))
        while await stream.receive_some(1 << 16):
            pass  # until the client closes

    result, counters = await download(tun_net, pcap_path, wrap, size, reply)
    print(f"\ntail of 2 lost: {result['seconds'] * 1000:.1f} ms, {counters}")  # (pytest -s)
    assert made[0].dropped == [size - 2 * mss, size - mss]
    assert counters.get("tail_loss_probe", 0) >= 1
    assert counters.get("fast_retransmit", 0) == 1
    assert "rto" not in counters


async def test_a_lost_resend_is_found_without_a_timeout(tun_net: TunNet, pcap_path: Path) -> None:
    """Download with segments whose resend is lost too: once the kernel SACKs data we
    sent after the resend, it goes a third time (``lost_retransmit``) instead of waiting
    for the retransmission timeout. New data goes out during the recovery thanks to the
    proportional rate reduction (RFC 6937); with NewReno's inflation, which sends none
    for the first half-window, 4 of these 10 losses still needed the timeout."""
    made: list[LossyDevice] = []

    def wrap(inner: Any) -> LossyDevice:
        made.append(LossyDevice(inner, "tx", EVERY, 10, times=2))
        return made[-1]

    result, counters = await download(tun_net, pcap_path, wrap, SIZE)
    print(f"\n10 segments lost twice: {result['seconds']:.2f} s, {counters}")  # (pytest -s)
    assert made[0].dropped == 10
    assert counters.get("lost_retransmit", 0) > 0
    assert "rto" not in counters


async def test_a_late_segment_s_needless_resend_is_undone(tun_net: TunNet, pcap_path: Path) -> None:
    """Download where 20 segments arrive three segments late: each sets off a fast
    retransmit, but the kernel's ACK for the late original echoes the original's
    timestamp, older than the resend's (RFC 7323 §4.3: TS.Recent from the segment that
    fills the hole), so each fast retransmit is found needless (Eifel, RFC 3522) and
    its window cut undone (RFC 4015): with no segment lost, ssthresh ends where it
    began."""
    made: list[LateSegments] = []

    def wrap(inner: Any) -> LateSegments:
        made.append(LateSegments(inner, EVERY, 20))
        return made[-1]

    result, counters = await download(tun_net, pcap_path, wrap, SIZE)
    print(f"\n20 late segments: {result['seconds']:.2f} s, {counters}")  # (pytest -s)
    assert made[0].late == 20 and not made[0].held
    # Every recovery was found needless. (Late segments less than a window apart fall
    # into one recovery: the later ones are resent as its holes, without a cut.)
    assert counters["fast_retransmit"] == counters["spurious_fast_retransmit"] >= 1
    assert counters["ssthresh_at_end"] == 1 << 62  # "arbitrarily high" (RFC 5681 §3.1)
    assert "rto" not in counters


async def test_a_spurious_timeout_is_found_and_undone(tun_net: TunNet, pcap_path: Path) -> None:
    """Download where the kernel's ACKs are held for 0.5 s and then all delivered: our
    retransmission timer fires meanwhile and resends the segment at SND.UNA, though
    nothing was lost. The late ACKs acknowledge data sent before the timeout and never
    resent, so F-RTO (RFC 5682) calls the timeout spurious: no go-back-N through the
    window, and its window cut is undone (RFC 4015) -- ssthresh ends where it began."""
    made: list[LateAcks] = []

    def wrap(inner: Any) -> LateAcks:
        made.append(LateAcks(inner, after=200, seconds=0.5))
        return made[-1]

    result, counters = await download(tun_net, pcap_path, wrap, SIZE)
    print(f"\nACKs held 0.5 s: {result['seconds']:.2f} s, {counters}")  # (pytest -s)
    assert made[0].held > 1
    assert counters["rto"] == counters["spurious_rto"] == 1
    assert counters["retransmit"] - counters.get("probe_retransmit", 0) == 1  # the RTO's
    assert counters["ssthresh_at_end"] == 1 << 62


async def test_without_timestamps_the_kernel_s_dsacks_undo_the_needless_resends(
    tun_net: TunNet, pcap_path: Path
) -> None:
    """The same late segments on a connection without timestamps (we do not agree to
    them; Windows clients run so by default): nothing tells the first ACK of a late
    original from one of its resend, but the kernel reports each needless resend as a
    duplicate (D-SACK, RFC 2883) when it arrives, and once every resend of a recovery
    has been so reported, its window cut is undone (RFC 3708, RFC 4015). The undo does
    not end the recovery early, so the same holes cannot start a second one: each
    late segment is resent once."""
    made: list[LateSegments] = []

    def wrap(inner: Any) -> LateSegments:
        made.append(LateSegments(inner, EVERY, 20))
        return made[-1]

    config = TcpConfig(timestamps=False)
    result, counters = await download(tun_net, pcap_path, wrap, SIZE, config=config)
    print(f"\n20 late segments, no timestamps: {result['seconds']:.2f} s, {counters}")
    assert made[0].late == 20 and not made[0].held
    assert "spurious_fast_retransmit" not in counters  # (no timestamps: no Eifel)
    assert counters["dsack_undo"] == counters["fast_retransmit"] >= 1
    # One resend per late segment, no chains (a tail loss probe may resend one more).
    assert counters["retransmit"] - counters.get("probe_retransmit", 0) == 20
    assert counters["ssthresh_at_end"] == 1 << 62
    assert "rto" not in counters
