"""The trio runtime: device batches in, machines driven, group commit, segments out.

Theory of operation
-------------------
Three tasks share one flow table and make no protocol decisions:

* the **receive loop** reads a batch of packets, parses them (malformed ones are
  counted per ``DropReason`` and dropped), finds each flow by its 4-tuple (a SYN to a
  listening port creates one) and feeds the segment to the flow's ``Connection``;
* the **timer loop** keeps one heap of every flow's next deadline (one task for the
  whole stack, not one per connection) and calls ``on_timer`` when it passes;
* the **transmit loop** is the only place where machines are drained: it collects
  the step of every flow touched since its last round, writes all deltas to the store
  in one group commit, and only then writes the segments to the device and wakes the
  tasks waiting on those flows (DESIGN.md "The hot path"). Application calls
  (``send``, ``receive``, ``shutdown``) only touch their machine and mark the flow.

Because every segment of a round waits for that round's commit, no segment leaves
before the version it ``needs_version`` is durable (G1, G2).
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import math
import os
import random
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import replace

import trio

from ..errors import ConnectionRefused, ConnectionResetByPeer, ConnectionTimedOut, StcpConfigError
from ..link.base import PacketDevice
from ..store.base import FlowDelta, Store
from ..tcp.config import TcpConfig
from ..tcp.events import Closed, Connected, EofReceived, Reset, TimedOut
from ..tcp.isn import iss_rfc6528
from ..tcp.machine import Connection
from ..tcp.state import TcpState
from ..wire.drop import DropReason, MalformedPacket
from ..wire.packet import build_packet, parse_packet_untrusted
from ..wire.seq import Seq
from ..wire.tcp import ACK, NO_OPTIONS, RST, SYN, Packet
from .flows import Flow, FlowKey, flow_id_of

logger = logging.getLogger("stcp.stack")

IPV4_TCP_OVERHEAD = 40  # 20 B IPv4 + 20 B TCP header
IPV6_TCP_OVERHEAD = 60  # 40 B IPv6 + 20 B TCP header
RECV_BATCH = 256
EPHEMERAL_PORTS = range(32768, 61000)  # Linux ip_local_port_range default
DEFAULT_SYN_BACKLOG = 1024  # Linux tcp_max_syn_backlog is of this order


class Listener:
    """Connections accepted on one port, waiting for ``accept()``."""

    def __init__(self, port: int, backlog: int) -> None:
        self.port = port
        self.backlog = backlog
        self.queue: deque[Flow] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.half_open = 0  # flows in SYN-RECEIVED (the SYN backlog)
        self.closed = False


class Runtime:
    """One user-space TCP/IP endpoint on one packet device.

    Args:
        device: Where packets come from and go to.
        store: Where every flow's state is made durable.
        addresses: The local IPv4/IPv6 addresses this stack answers for.
        config: Per-connection settings; ``mss`` is derived from the device MTU
            unless set explicitly (``None``).
        epoch: The fencing epoch written with every delta (G5).
        rng: Source of ephemeral ports (injected so tests are deterministic).
        iss_secret: Key of the RFC 6528 ISS function.
    """

    def __init__(
        self,
        device: PacketDevice,
        store: Store,
        addresses: Iterable[str],
        *,
        config: TcpConfig | None = None,
        epoch: int = 1,
        rng: random.Random | None = None,
        iss_secret: bytes | None = None,
        syn_backlog: int = DEFAULT_SYN_BACKLOG,
    ) -> None:
        self.device = device
        self.store = store
        self._addrs: set[bytes] = set()
        self._addr4: bytes | None = None
        self._addr6: bytes | None = None
        for text in addresses:
            packed = ipaddress.ip_address(text).packed
            self._addrs.add(packed)
            if len(packed) == 4:
                self._addr4 = self._addr4 or packed
            else:
                self._addr6 = self._addr6 or packed
        if not self._addrs:
            raise StcpConfigError("a stack needs at least one local address (--listen ADDR:PORT)")
        # Without an explicit config the MSS follows the device MTU (TcpConfig.mss caps it).
        base = config or TcpConfig(mss=65535)
        mtu = device.mtu
        self._config4 = replace(base, mss=min(base.mss, mtu - IPV4_TCP_OVERHEAD))
        self._config6 = replace(base, mss=min(base.mss, mtu - IPV6_TCP_OVERHEAD))
        self.epoch = epoch
        self._rng = rng or random.Random()
        self._iss_secret = iss_secret if iss_secret is not None else os.urandom(16)
        self._syn_backlog = syn_backlog
        self.flows: dict[FlowKey, Flow] = {}
        self.listeners: dict[int, Listener] = {}
        self.stats: Counter[str] = Counter()
        self.drops: Counter[DropReason] = Counter()
        self._dirty: list[Flow] = []
        # RSTs answering segments of unknown flows (they carry no delta)
        self._pending_raw: list[bytes | bytearray | memoryview] = []
        self._tx_wakeup = trio.Event()
        self._timer_heap: list[tuple[float, int, Flow]] = []
        self._timer_seq = 0
        self._timer_scope: trio.CancelScope | None = None
        self._rounds_started = 0
        self._rounds_done = 0
        self._round_lot = trio.lowlevel.ParkingLot()
        self.store_error: BaseException | None = None
        # Checksum offload (link/base.py): the device verified received TCP checksums,
        # and/or completes the checksums of what we send.
        self._verify_checksum = not getattr(device, "rx_checksum_verified", False)
        self._offload_checksum = bool(getattr(device, "tx_checksum_offload", False))

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receive, timer and transmit loops until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._transmit_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._receive_loop)
            task_status.started()

    async def _receive_loop(self) -> None:
        device = self.device
        flows = self.flows
        stats = self.stats
        verify = self._verify_checksum
        while True:
            batch = await device.recv_batch(RECV_BATCH)
            now = trio.current_time()
            stats["packets_in"] += len(batch)
            for buf in batch:
                try:
                    pkt = parse_packet_untrusted(buf, verify_checksum=verify)
                except MalformedPacket as exc:
                    self.drops[exc.reason] += 1
                    continue
                seg = pkt.tcp
                flow = flows.get((pkt.src, seg.src_port, pkt.dst, seg.dst_port))
                if flow is None or (seg.flags & SYN and self._syn_replaces(flow, pkt)):
                    self._on_unknown_flow(pkt, now)
                    continue
                flow.conn.on_segment(seg, now)
                if not flow.dirty:
                    flow.dirty = True
                    self._dirty.append(flow)
            if self._dirty:
                self._tx_wakeup.set()

    def _syn_replaces(self, flow: Flow, pkt: Packet) -> bool:
        """A new SYN on a flow in TIME-WAIT that RFC 6191 lets in replaces that flow."""
        conn = flow.conn
        if conn.state is not TcpState.TIME_WAIT or pkt.tcp.flags & ACK:
            return False
        accepts = getattr(conn, "accepts_new_syn", None)
        if accepts is None or not accepts(pkt.tcp):
            return False
        self._remove_flow(flow)
        return True

    def _on_unknown_flow(self, pkt: Packet, now: float) -> None:
        seg = pkt.tcp
        if pkt.dst not in self._addrs:
            self.drops[DropReason.NO_FLOW] += 1
            return
        listener = self.listeners.get(seg.dst_port)
        if seg.flags & (SYN | ACK | RST) == SYN and listener is not None and not listener.closed:
            if listener.half_open + len(listener.queue) >= listener.backlog:
                self.drops[DropReason.BACKLOG_FULL] += 1
                return
            key = (pkt.src, seg.src_port, pkt.dst, seg.dst_port)
            config = self._config4 if pkt.version == 4 else self._config6
            conn = Connection.open_passive(
                seg,
                now=now,
                config=config,
                iss=self._iss(now, key),
                tsval_offset=self._rng.getrandbits(32),
            )
            flow = Flow(key=key, flow_id=flow_id_of(key), conn=conn, listener_port=seg.dst_port)
            listener.half_open += 1
            self.flows[key] = flow
            self.stats["passive_opens"] += 1
            self._mark(flow)
            return
        # RFC 9293 §3.10.7.1: a segment for a CLOSED (non-existent) connection gets a RST,
        # unless it is itself a RST.
        self.drops[DropReason.NO_FLOW] += 1
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            rst_seq, rst_ack, flags = seg.ack, 0, RST
        else:
            seg_len = len(seg.payload) + (1 if seg.flags & SYN else 0) + (seg.flags & 1)
            rst_seq, rst_ack, flags = 0, (seg.seq + seg_len) & 0xFFFFFFFF, RST | ACK
        packet = build_packet(
            pkt.dst, pkt.src, seg.dst_port, seg.src_port, rst_seq, rst_ack, flags, 0,
            NO_OPTIONS, b"", offload_checksum=self._offload_checksum,
        )
        self.stats["rst_sent"] += 1
        self._pending_raw.append(packet)
        self._tx_wakeup.set()

    def _iss(self, now: float, key: FlowKey) -> Seq:
        remote, rport, local, lport = key
        return iss_rfc6528(now, local, lport, remote, rport, self._iss_secret)

    async def _timer_loop(self) -> None:
        heap = self._timer_heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                at, _, flow = heapq.heappop(heap)
                if flow.deadline_at != at or flow.closed:
                    continue  # superseded by a later reschedule
                flow.deadline_at = None
                flow.conn.on_timer(now)
                self._mark(flow)

    def _schedule(self, flow: Flow, at: float | None) -> None:
        if at == flow.deadline_at:
            return
        flow.deadline_at = at
        if at is None:
            return
        self._timer_seq += 1
        heapq.heappush(self._timer_heap, (at, self._timer_seq, flow))
        scope = self._timer_scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    def _mark(self, flow: Flow) -> None:
        """Queue a flow for the next transmit round."""
        if not flow.dirty:
            flow.dirty = True
            self._dirty.append(flow)
        self._tx_wakeup.set()

    async def _transmit_loop(self) -> None:
        while True:
            await self._tx_wakeup.wait()
            self._tx_wakeup = trio.Event()
            await self._round()

    async def _round(self) -> None:
        """Drain every marked flow, group-commit the deltas, then transmit and wake."""
        self._rounds_started += 1
        dirty, self._dirty = self._dirty, []
        raw, self._pending_raw = self._pending_raw, []
        epoch = self.epoch
        deltas: list[FlowDelta] = []
        packets: list[bytes | bytearray | memoryview] = raw
        woken: list[Flow] = []
        offload = self._offload_checksum
        for flow in dirty:
            flow.dirty = False
            step = flow.conn.drain()
            if step.delta is not None:
                deltas.append(FlowDelta(flow.flow_id, epoch, step.delta))
            if step.segments:
                remote, rport, local, lport = flow.key
                for out in step.segments:
                    packets.append(
                        build_packet(
                            local, remote, lport, rport, out.seq, out.ack, out.flags,
                            out.window, out.options, out.payload, offload_checksum=offload,
                        )
                    )
            if step.events:
                self._on_events(flow, step.events)
                woken.append(flow)
            elif flow.lot:
                woken.append(flow)  # window or buffer space may have changed
            if not flow.closed:
                self._schedule(flow, flow.conn.next_deadline())
        if deltas:
            await self.store.commit(deltas)
            self.stats["group_commits"] += 1
        if packets:
            self.stats["packets_out"] += len(packets)
            await self.device.send_batch(packets)
        for flow in woken:
            flow.lot.unpark_all()
        self._rounds_done += 1
        self._round_lot.unpark_all()

    def _on_events(self, flow: Flow, events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, Connected):
                flow.connected = True
                if flow.listener_port is not None and not flow.accepted:
                    listener = self.listeners.get(flow.listener_port)
                    if listener is not None:
                        listener.half_open -= 1
                        if not listener.closed:
                            flow.accepted = True
                            listener.queue.append(flow)
                            listener.lot.unpark_all()
            elif isinstance(event, EofReceived):
                flow.eof = True
            elif isinstance(event, Reset):
                flow.reset = True
                flow.error = ConnectionRefused() if event.refused else ConnectionResetByPeer()
            elif isinstance(event, TimedOut):
                flow.error = ConnectionTimedOut()
            elif isinstance(event, Closed):
                self._remove_flow(flow)

    def _remove_flow(self, flow: Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        flow.deadline_at = None
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        if flow.listener_port is not None and not flow.connected:
            listener = self.listeners.get(flow.listener_port)
            if listener is not None:
                listener.half_open -= 1
        flow.lot.unpark_all()

    # ------------------------------------------------------------ app support

    def touch(self, flow: Flow) -> None:
        """An application call changed ``flow``'s machine: transmit what it produced."""
        self._mark(flow)

    async def wait_round(self) -> None:
        """Wait until a transmit round that started after this call has completed.

        After ``touch(flow)``, this returns once the flow's delta is durable and its
        segments are on the device (G2 for ``send_all``).
        """
        target = self._rounds_started + 1
        while self._rounds_done < target:
            await self._round_lot.park()

    def listen(self, port: int, backlog: int | None = None) -> Listener:
        if not 0 < port < 65536:
            raise StcpConfigError(f"port {port} is not in 1..65535")
        if port in self.listeners and not self.listeners[port].closed:
            raise StcpConfigError(f"port {port} already has a listener on this stack")
        listener = Listener(port, backlog or self._syn_backlog)
        self.listeners[port] = listener
        return listener

    def close_listener(self, listener: Listener) -> None:
        listener.closed = True
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]
        listener.lot.unpark_all()

    def open_flow(self, remote: str, remote_port: int) -> Flow:
        """Start an active open towards ``remote:remote_port`` (the SYN goes out next round)."""
        raddr = ipaddress.ip_address(remote).packed
        local = self._addr4 if len(raddr) == 4 else self._addr6
        if local is None:
            family = "IPv4" if len(raddr) == 4 else "IPv6"
            raise StcpConfigError(f"this stack has no {family} address to connect to {remote}")
        for _ in range(64):
            lport = self._rng.choice(EPHEMERAL_PORTS)
            key = (raddr, remote_port, local, lport)
            if key not in self.flows and lport not in self.listeners:
                break
        else:
            raise StcpConfigError("no free ephemeral port")
        now = trio.current_time()
        config = self._config4 if len(raddr) == 4 else self._config6
        conn = Connection.open_active(
            now=now, config=config, iss=self._iss(now, key), tsval_offset=self._rng.getrandbits(32)
        )
        flow = Flow(key=key, flow_id=flow_id_of(key), conn=conn)
        self.flows[key] = flow
        self.stats["active_opens"] += 1
        self._mark(flow)
        return flow

