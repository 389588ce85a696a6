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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import trio

from ..errors import (
    ConnectionAborted,
    ConnectionRefused,
    ConnectionResetByPeer,
    ConnectionTimedOut,
    StcpConfigError,
    StcpError,
)
from ..link.base import OutPacket, PacketDevice
from ..store.base import (
    SECRET_BYTES,
    FencedOut,
    FlowDelta,
    FlowLost,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    new_flow_delta,
    payload_bytes,
)
from ..tcp.config import TcpConfig
from ..tcp.events import (
    Aborted,
    Closed,
    Connected,
    DataReadable,
    EofReceived,
    Event,
    Reset,
    SendSpace,
    TimedOut,
)
from ..tcp.isn import IssGenerator
from ..tcp.machine import Connection
from ..tcp.state import TcpState
from ..tcp.step import OutSegment
from ..tcp.syncookie import (
    COOKIE_PERIOD,
    MAX_COOKIE_AGE,
    SynCookies,
    cookie_tsval,
    options_from_tsecr,
    tsval_at,
    tuple_bytes,
)
from ..tcp.timewait import new_syn_acceptable
from ..wire.drop import DropReason, MalformedPacket
from ..wire.fmt import endpoint_text
from ..wire.icmp import parse_too_big_untrusted
from ..wire.packet import build_packet, parse_packet_untrusted
from ..wire.seq import SEQ_MASK, Seq, seq_le, seq_lt
from ..wire.tcp import ACK, NO_OPTIONS, RST, SYN, Packet, TcpOptions, TcpSegment
from .clock import machine_clock_skew
from .flows import Flow, FlowKey, flow_id_of, holds_uncommitted
from .recovery import restore_flows
from .siblings import Siblings
from .signatures import Md5Keys
from .sources import Source, SourceRegistry

logger = logging.getLogger("stcp.stack")

IPV4_TCP_OVERHEAD = 40  # 20 B IPv4 + 20 B TCP header
IPV6_TCP_OVERHEAD = 60  # 40 B IPv6 + 20 B TCP header
RECV_BATCH = 256
WOKEN_STEPS = 4
"""Scheduler steps a round waits, at most, for the tasks woken since the last one (early
readers) while new arrivals wait: until every reader woken with new bytes has run.
A 1 GB strict upload sent 118-167 MB of received payload to Redis with one step and
arrivals let in, 54-88 MB with four steps, 36-45 MB with arrivals held too, and ~2 MB
(TCB and app state only) once the round also waits for readers woken but not yet run
(bench/README.md)."""
ASYNC_BACKLOG_MAX = 1 << 20
"""Async durability: payload bytes queued for the store beyond which rounds wait for
the commit task (back-pressure instead of an unbounded queue)."""
ASYNC_DELTA_WEIGHT = 256
"""What a queued delta counts against ``ASYNC_BACKLOG_MAX`` besides its payload: one
without any (a reader that keeps up, a regenerable send) still holds ~0.8 KB and
state a crash loses. Counted as nothing, a store outage let them queue without end
(~100 a second per flow) while ACKs went on leaving (a review found it)."""
STORE_RETRY_MIN, STORE_RETRY_MAX = 0.05, 0.25
"""Backoff between tries of a commit the store refused or timed out (G7), doubling: a
store back from an outage sees the held deltas within STORE_RETRY_MAX, and then every
segment withheld meanwhile leaves (``_resend_withheld``)."""
START_RETRY_MAX = 2.0
"""Longest wait between tries of the start-up claim and restore while the store does
not answer (they double from STORE_RETRY_MIN): a server restarted during a store
outage waits for it, as a running one does (G7), instead of failing to start."""
EPHEMERAL_PORTS = range(32768, 61000)  # Linux ip_local_port_range default
DEFAULT_SYN_BACKLOG = 1024  # Linux tcp_max_syn_backlog is of this order
DURABILITY_MODES = ("strict", "async", "ack-on-commit")
FENCED_MEMORY = 65536
"""Flows fenced off (G5) whose 4-tuples this process still recognizes, to drop their
late segments silently rather than answer them with RST (``Runtime._fenced``)."""
FORGET_QUEUE = 65536  # closed flows waiting to be removed from the store
FORGET_BATCH = 512  # closed flows removed per store call
UNCLAIMED_GRACE = 60.0  # seconds a restored flow waits for listen() or reattach()
PARTNER_GRACE = 5.0
"""Seconds after a transaction's partners were let go with a fenced flow (G4 with G5)
before the store is asked whether a newer instance took them: one that started before
they existed never lists them, and no one would carry them on (``_settle_partners``).
Longer than a restore of 10,000 flows takes (~1 s), so an owner that did list them has
claimed them by then."""
IPV4_MIN_PMTU = 552  # Linux net.ipv4.route.min_pmtu: a smaller reported MTU counts as this
IPV6_MIN_MTU = 1280  # RFC 8200 §5
SPLIT_PAYLOAD = 4096  # below this, one copy into the packet is cheaper than a 3-part writev


class Listener:
    """Connections accepted on one port, waiting for ``accept()``."""

    def __init__(self, port: int, backlog: int, *, manual_commit: bool = False) -> None:
        self.port = port
        self.manual_commit = manual_commit
        self.backlog = backlog
        self.queue: deque[Flow] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.half_open = 0  # flows in SYN-RECEIVED (the SYN backlog)
        self.closed = False
        # Set by ``Stack.serve``: established flows go straight to it (it starts their
        # handler) instead of through the queue and an accepting task.
        self.deliver: Callable[[Flow], None] | None = None


def _durable_already(
    outs: list[tuple[Flow, OutSegment]],
) -> tuple[list[tuple[Flow, OutSegment]], list[tuple[Flow, OutSegment]]]:
    """``outs`` split into what may leave now -- each flow's segments up to its first
    that needs a version not durable yet (G1, G2) -- and the rest, in order. (A flow's
    segments keep their order on the wire: no reordering for the peer to mistake for
    loss.)"""
    ready: list[tuple[Flow, OutSegment]] = []
    rest: list[tuple[Flow, OutSegment]] = []
    held: set[int] = set()
    for item in outs:
        flow, out = item
        if out.needs_version <= flow.durable_version and (not held or id(flow) not in held):
            ready.append(item)
        else:
            held.add(id(flow))
            rest.append(item)
    return ready, rest


def _news_for_reader(conn: Connection, events: Sequence[Event]) -> bool:
    """Whether a round's ``events`` give a waiting reader something to do: bytes to read,
    or news other than data and send space (EOF, reset, close). ``DataReadable`` for bytes
    an early reader (``Runtime._arrive``) has read already is none: woken for it, the
    reader would only find nothing and wait again (~1 wake-up per MB of an upload)."""
    for event in events:
        kind = type(event)
        if kind is SendSpace:
            continue
        if kind is not DataReadable or conn.recv_available:
            return True
    return False


class Runtime:
    """One user-space TCP/IP endpoint on one packet device.

    Args:
        device: Where packets come from and go to.
        store: Where every flow's state is made durable.
        addresses: The local IPv4/IPv6 addresses this stack answers for.
        config: Per-connection settings; ``mss`` is derived from the device MTU
            unless set explicitly (``None``).
        instance: This server's name in its log lines. What it restores on start is every
            flow of ``store`` (a ``RedisStore``'s service), claimed with a new fencing
            epoch of the store's (G5): a newer stack on the same store -- restarted,
            upgraded, renamed -- takes the flows over.
        durability: ``"strict"`` (default): a segment leaves only after the state it
            depends on is durable (G1, G2). ``"async"``: segments leave at once and the
            store catches up (the paper's offloader); a crash may lose what was
            acknowledged but not yet written: at most the deltas of the rounds in flight.
            ``"ack-on-commit"`` (TCPR): as strict for what we send, but an ACK covers
            only what the application committed, so received bytes are never stored:
            after a crash the peer sends again what was not committed
            (``TcpConfig.ack_on_commit``).
        sources: The sources of regenerable sends (``Stream.send_from``) other than
            files, so a restore can read their unacknowledged bytes again.
        rng: Source of ephemeral ports (injected so tests are deterministic).
        iss_secret: Key of the RFC 6528 ISS function and of the SYN cookies; by default
            the store's ``stack_secret``, so that a restarted stack's new connections
            keep to its predecessor's sequence spaces and it takes the cookies its
            predecessor sent.
        syn_backlog: Half-open plus not yet accepted connections per listener.
        syn_cookies: Answer SYNs with a SYN cookie (``tcp/syncookie.py``) when a
            listener's backlog is full, as Linux's ``tcp_syncookies = 1`` does, instead
            of dropping them: a SYN flood then keeps nothing and holds no one out.
        unclaimed_grace: Seconds a restored stream waits to be taken -- by a listener
            on its port, or by ``Stack.reattach`` -- before it is reset, so a stream
            no app takes back does not hold its peer and the store for ever.
        siblings: This stack is one worker of several on a multi-queue device
            (``stack/siblings.py``): a segment of a flow it does not hold goes to the
            next worker instead of being answered with RST.
        md5_keys: TCP MD5 signature keys (RFC 2385, as BGP peers use them) by peer
            address or network (``stack/signatures.py``): every segment to and from
            those peers is signed, and one without the right signature is dropped.
    """

    def __init__(
        self,
        device: PacketDevice,
        store: Store,
        addresses: Iterable[str],
        *,
        config: TcpConfig | None = None,
        rng: random.Random | None = None,
        iss_secret: bytes | None = None,
        syn_backlog: int = DEFAULT_SYN_BACKLOG,
        syn_cookies: bool = True,
        durability: str = "strict",
        instance: str = "default",
        sources: Iterable[Source] = (),
        unclaimed_grace: float = UNCLAIMED_GRACE,
        siblings: Siblings | None = None,
        md5_keys: Mapping[str, bytes | str] | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise StcpConfigError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, not {durability!r}"
            )
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
        if base.ack_on_commit != (durability == "ack-on-commit"):
            base = replace(base, ack_on_commit=durability == "ack-on-commit")
        mtu = device.mtu
        # Send-side segmentation offload (link/base.py "tx_gso_max"): super-segments
        # need split packets and a partial checksum the device completes per segment.
        # The device decides; a config's gso_max never outlives a device without it.
        gso_max = int(getattr(device, "tx_gso_max", 0))
        if not (
            getattr(device, "accepts_split_packets", False)
            and getattr(device, "tx_checksum_offload", False)
        ):
            gso_max = 0
        if base.gso_max != gso_max:
            base = replace(base, gso_max=gso_max)
        self._config4 = replace(base, mss=min(base.mss, mtu - IPV4_TCP_OVERHEAD))
        self._config6 = replace(base, mss=min(base.mss, mtu - IPV6_TCP_OVERHEAD))
        # (IPv6?, manual commit?) -> config
        self._configs = {
            (ipv6, manual): replace(cfg, manual_commit=manual)
            for ipv6, cfg in ((False, self._config4), (True, self._config6))
            for manual in (False, True)
        }
        self._md5 = Md5Keys(md5_keys) if md5_keys else None
        # Signed connections (TcpConfig.md5): no timestamps and no super-segments.
        self._signed_configs = {
            flags: replace(cfg, md5=True, timestamps=False, gso_max=0)
            for flags, cfg in self._configs.items()
        }
        self.epoch = 0  # set by run() from store.next_epoch()
        self.restored = 0
        self._skew = 0.0  # trio clock - machine clock (clock.machine_clock_skew)
        self._rng = rng or random.Random()
        self._secret_given = iss_secret is not None
        self._syn_backlog = syn_backlog
        self._syn_cookies = syn_cookies
        self._iss_of: IssGenerator
        self._cookies: SynCookies | None
        self._use_secret(iss_secret if iss_secret is not None else os.urandom(SECRET_BYTES))
        self._cookies_until = -math.inf  # cookie ACKs are looked at until then
        self.flows: dict[FlowKey, Flow] = {}
        self.listeners: dict[int, Listener] = {}
        self.stats: Counter[str] = Counter()
        self.drops: Counter[DropReason] = Counter()
        # The event counters of connections that ended or froze (tcp_totals adds the
        # live ones): what `netstat -s` is to the kernel's TCP.
        self._ended_counters: Counter[str] = Counter()
        self._dirty: list[Flow] = []
        self._time_wait: list[Flow] = []  # TIME-WAIT flows to freeze (_freeze_time_wait)
        # RSTs answering segments of unknown flows (they carry no delta)
        self._pending_raw: list[OutPacket] = []
        self._tx_wakeup = trio.Event()
        self._let_woken_run = False  # tasks were woken since the last round
        self._arrivals_held: trio.Event | None = None  # set: woken tasks run first
        self._readers_woken = 0  # readers woken with new bytes that have not run yet
        self._fresh: list[Flow] = []  # accepted before their round (_accept_early)
        self._fenced: dict[FlowKey, None] = {}  # newest last; at most FENCED_MEMORY
        self._partners: list[Flow] = []  # let go with a fenced flow, not fenced themselves
        self._nursery: trio.Nursery | None = None  # run()'s, for tasks started on demand
        self._withheld: set[Flow] = set()  # flows with segments held back (store outage)
        self._timer_heap: list[tuple[float, int, Flow]] = []
        self._timer_seq = 0
        self._timer_scope: trio.CancelScope | None = None
        self._rounds_started = 0
        self._rounds_done = 0
        self._round_waiters: list[tuple[int, trio.Event]] = []  # (round number, flush)
        self.durability = durability
        self._uncommitted: list[tuple[Flow, FlowDelta]] = []
        # Transactions over several flows (touch_together): those no round has drained
        # yet, then those drained, each member with the delta version that holds its
        # part, until all of them are durable. A flow the store fences off takes the
        # others of its transactions with it (_drop_failed).
        self._links_pending: list[tuple[Flow, ...]] = []
        self._links: list[tuple[tuple[Flow, int], ...]] = []
        self._commit_wakeup = trio.Event()  # async durability: deltas are queued
        self._commit_done = trio.Event()  # async durability: a commit attempt ended
        self._backlog = 0  # async durability: what _uncommitted holds (ASYNC_DELTA_WEIGHT)
        self._store_retry_at = -math.inf
        self._store_backoff = 0.0
        self._closed_flows: list[Flow] = []
        self._unclaimed: dict[int, list[Flow]] = {}  # restored flows waiting for listen()
        self._unclaimed_grace = unclaimed_grace
        self._unclaimed_watched = False  # _reset_unclaimed_later runs
        self._siblings = siblings
        self.instance = instance
        self.sources = SourceRegistry(sources)  # regenerable sends, for restores
        self._forget_send, self._forget_receive = trio.open_memory_channel[tuple[str, int]](
            FORGET_QUEUE
        )
        self.store_error: BaseException | None = None
        # Checksum offload (link/base.py): the device verified received TCP checksums,
        # and/or completes the checksums of what we send.
        self._verify_checksum = not getattr(device, "rx_checksum_verified", False)
        self._offload_checksum = bool(getattr(device, "tx_checksum_offload", False))
        # Payloads of at least this size go to the device beside their headers, never
        # copied (link/base.py "accepts_split_packets").
        self._split_at = SPLIT_PAYLOAD if getattr(device, "accepts_split_packets", False) else 0
        self._send_now: Callable[[list[OutPacket]], int] | None = getattr(
            device, "send_batch_nowait", None
        )

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and restore this instance's flows, then run the loops until cancelled.

        Restoring comes first (gVisor's order): every stored flow is in the flow table
        before the device is read, so no segment of a known flow meets "no such flow"
        and an RST (G3).
        """
        self._skew = machine_clock_skew()
        await self._claim_and_restore()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._transmit_loop)
                nursery.start_soon(self._forget_loop)
                if self.durability == "async":
                    nursery.start_soon(self._async_commit_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._receive_loop)
                if self._siblings is not None:
                    nursery.start_soon(self._sibling_loop)
                if self._unclaimed:
                    self._unclaimed_watched = True
                    nursery.start_soon(self._reset_unclaimed_later)
                task_status.started()
        finally:
            self._nursery = None  # stopped: nothing starts tasks in it any more

    async def _claim_and_restore(self) -> None:
        """A new epoch and every flow of this instance, retried from scratch -- a fresh
        epoch, nothing restored -- while the store is unavailable (G7): the device is
        not read meanwhile, so peers retransmit into the TUN queue and nothing is
        answered. Other store errors (a refused script, a password) propagate."""
        delay = STORE_RETRY_MIN
        while True:
            try:
                self.epoch = await self.store.next_epoch()
                if not self._secret_given:
                    self._use_secret(await self.store.stack_secret())
                self.restored = await restore_flows(self)
                if self._cookies is not None:
                    # The stack before this one may have sent cookies (they leave
                    # nothing behind to tell): their ACKs are looked at for as long
                    # as one of them can still be good.
                    self._cookies_until = self.now() + COOKIE_PERIOD * MAX_COOKIE_AGE
                return
            except StoreUnavailable as exc:
                self.flows.clear()
                self._dirty.clear()
                self._unclaimed.clear()
                self._timer_heap.clear()
                self._pending_raw.clear()  # (the next try makes its RSTs again)
                self.stats["store_unavailable"] += 1
                logger.warning(
                    "store unavailable at start, claiming and restoring again in %.2g s: %s",
                    delay,
                    exc,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX)

    def _use_secret(self, secret: bytes) -> None:
        self._iss_of = IssGenerator(secret)
        self._cookies = SynCookies(secret) if self._syn_cookies else None

    def _leave_unclaimed(self, port: int, flow: Flow) -> None:
        """Keep restored ``flow`` for a listener on ``port`` (0: for ``reattach``) for
        the grace period; after it, ``_reset_unclaimed_later`` resets it. A flow
        restored before its handshake was done comes here once it is done, any time."""
        flow.unclaimed_until = self.now() + self._unclaimed_grace
        self._unclaimed.setdefault(port, []).append(flow)
        if not self._unclaimed_watched and self._nursery is not None:
            self._unclaimed_watched = True
            self._nursery.start_soon(self._reset_unclaimed_later)

    async def _reset_unclaimed_later(self) -> None:
        """Reset the restored streams still untaken after their grace period (at the
        start, all of them at once), until none is left waiting."""
        while self._unclaimed:
            due = min(f.unclaimed_until for flows in self._unclaimed.values() for f in flows)
            await trio.sleep_until(due + self._skew)
            now = self.now()
            expired: list[Flow] = []
            for port, flows in list(self._unclaimed.items()):
                waiting = [flow for flow in flows if flow.unclaimed_until > now]
                expired += [flow for flow in flows if flow.unclaimed_until <= now]
                if waiting:
                    self._unclaimed[port] = waiting
                else:
                    del self._unclaimed[port]
            for flow in expired:
                if flow.closed:
                    self.release_kept(flow)  # (a closed one kept for an app that never came)
                    continue
                logger.warning(
                    "[%s] no listener or reattach() took it in %g s: reset",
                    flow.flow_id,
                    self._unclaimed_grace,
                )
                self.stats["unclaimed_reset"] += 1
                flow.conn.app_abort(now)
                self._mark(flow)
        self._unclaimed_watched = False

    async def _receive_loop(self) -> None:
        device = self.device
        while True:
            batch = await device.recv_batch(RECV_BATCH)
            await self._arrivals_may_pass()
            self._arrive(batch, 0)

    async def _sibling_loop(self) -> None:
        """Take the segments other workers forwarded (``stack/siblings.py``)."""
        assert self._siblings is not None
        receive = self._siblings.receive
        last_hop = self._siblings.last_hop
        while True:
            batch = await receive(RECV_BATCH)
            await self._arrivals_may_pass()
            for hops, packet in batch:
                self.stats["forwarded_in"] += 1
                self._arrive([packet], min(hops, last_hop))

    async def _arrivals_may_pass(self) -> None:
        """Wait while a round lets the readers it woke run first (``_transmit_loop``)."""
        held = self._arrivals_held
        if held is not None:
            await held.wait()

    def _arrive(self, batch: list[memoryview], hops: int) -> None:
        """Hand each packet of ``batch`` to its flow (``hops``: workers it has passed)."""
        flows = self.flows
        verify = self._verify_checksum
        md5 = self._md5
        now = self.now()
        self.stats["packets_in"] += len(batch)
        readers: list[Flow] = []
        deferred = 0
        for buf in batch:
            try:
                pkt = parse_packet_untrusted(buf, verify_checksum=verify)
            except MalformedPacket as exc:
                if exc.reason is not DropReason.NOT_TCP or not self._on_icmp(buf, now, hops):
                    self.drops[exc.reason] += 1
                continue
            seg = pkt.tcp
            if md5 is not None:
                refusal = md5.refusal(pkt, buf)
                if refusal is not None:
                    self.stats[refusal] += 1  # (RFC 2385: dropped, never answered)
                    continue
            elif seg.options.md5 is not None:
                self.stats["md5_unexpected"] += 1
                continue
            flow = flows.get((pkt.src, seg.src_port, pkt.dst, seg.dst_port))
            if flow is None or (seg.flags & SYN and self._syn_replaces(flow, pkt)):
                self._on_unknown_flow(pkt, now, buf, hops)
                continue
            if (
                self._siblings is not None
                and (flow.backlog is not None or flow.recovered)
                and self._answered_elsewhere(flow, seg, buf, hops)
            ):
                continue
            conn = flow.conn
            # (a passive flow not yet connected: this segment may complete its handshake;
            # a restored one in SYN-RECEIVED counts as connected and waits for its round)
            handshake = not flow.connected and flow.listener_port is not None
            conn.on_segment(seg, now)
            if handshake:
                self._accept_early(flow)
            if flow.rx_lot and (conn.rcv_buf or conn.at_eof):
                readers.append(flow)
            if not flow.dirty:
                if not flow.lot and conn.drain_may_wait() and self._timer_flushes(flow, conn):
                    # A pure ACK of sent data: its delta waits for the flow's next round
                    # or timer (Connection.drain_may_wait), not a round and a commit now.
                    deferred += 1
                    continue
                flow.dirty = True
                self._dirty.append(flow)
        if deferred:
            self.stats["drains_deferred"] += deferred
        if readers:
            self._let_woken_run = True
        for flow in readers:
            # Early readers: bytes can be read before the round that stores them.
            # Read (and so committed, at level 1) by then, they are acknowledged
            # but never written to the store (the drain drops bytes appended and
            # trimmed in one delta); unread, they are stored as before. Either way
            # the ACK leaves after its round is durable (G1). A crash in between
            # loses nothing: unacknowledged, the bytes come again from the peer.
            # The same for the peer's FIN: the app's answer to EOF (its own FIN)
            # joins the round that stores the FIN, and carries its ACK.
            flow.rx_lot.unpark_all()
            if not flow.reader_woken:
                flow.reader_woken = True  # until its task resumes (reader_resumed)
                self._readers_woken += 1
        if self._dirty:
            self._tx_wakeup.set()

    def _accept_early(self, flow: Flow) -> None:
        """Hand a passive flow whose handshake this segment completed to its listener
        now, before the round that stores it (``_on_events`` finds it done; a restored
        flow never comes here, nor one without an open listener), and let its handler
        run first (``Flow.fresh``): a request that came with or right after the
        handshake's ACK is read and answered in that round -- one commit and one round
        per connection less. Early readers' reasoning holds: until the round is durable
        nothing leaves, and a crash before it loses the handler's work along with the
        handshake's completion, which the peer's resend repeats."""
        state = flow.conn.tcb.state
        if state is TcpState.SYN_RECEIVED or not state.synchronized():
            return
        listener = self.listeners.get(flow.key[3])
        if listener is None or listener.closed:
            return  # the round's Connected event keeps it for a later listener
        flow.connected = True
        self._leave_backlog(flow)
        self._offer(flow)
        if flow.accepted:
            flow.fresh = True
            self._fresh.append(flow)
            self._let_woken_run = True

    @staticmethod
    def _timer_flushes(flow: Flow, conn: Connection) -> bool:
        """Whether ``flow``'s registered deadline comes no later than ``conn``'s next one,
        so that a drain left pending happens by then at the latest (the timer task
        calls ``on_timer``, which fires what is due -- maybe nothing -- and marks the
        flow). With no deadline registered nothing would drain it: not deferred."""
        registered = flow.deadline_at
        if registered is None:
            return False
        at = conn.next_deadline()
        return at is None or registered <= at

    def _on_icmp(self, buf: memoryview, now: float, hops: int) -> bool:
        """Path MTU discovery (RFC 1191, RFC 8201): hand an ICMP "packet too big" about
        one of our segments to its connection (or to the next worker, which may hold
        it). False if ``buf`` is not one."""
        try:
            too_big = parse_too_big_untrusted(buf)
        except MalformedPacket as exc:
            self.drops[exc.reason] += 1
            return True
        if too_big is None:
            return False
        flow = self.flows.get((too_big.dst, too_big.dst_port, too_big.src, too_big.src_port))
        mtu = too_big.mtu
        if too_big.version == 6:
            if mtu < IPV6_MIN_MTU:
                return True  # RFC 8201 §4: never below the IPv6 minimum link MTU
            overhead = IPV6_TCP_OVERHEAD
        else:
            mtu = max(mtu, IPV4_MIN_PMTU)
            overhead = IPV4_TCP_OVERHEAD
        if flow is None or flow.closed:
            if not self._pass_on(buf, hops):
                self.stats["icmp_too_big_no_flow"] += 1
            return True
        self.stats["icmp_too_big"] += 1
        if flow.conn.on_packet_too_big(mtu - overhead, too_big.seq, now) and not flow.dirty:
            flow.dirty = True
            self._dirty.append(flow)
        return True

    def _pass_on(self, buf: memoryview, hops: int) -> bool:
        """Hand a packet about a flow this worker does not hold to the next worker of the
        ring, unless this is the last hop (``stack/siblings.py``). Returns whether it is
        taken care of (passed on, or dropped because the next worker is down)."""
        siblings = self._siblings
        if siblings is None or hops >= siblings.last_hop:
            return False
        # Another worker may hold this flow: it gets the packet (RSTs too), and the last
        # of the ring answers for all.
        if siblings.forward(buf, hops + 1):
            self.stats["forwarded"] += 1
        else:
            self.stats["forward_failed"] += 1
            self.drops[DropReason.NO_FLOW] += 1
        return True

    def _answered_elsewhere(self, flow: Flow, seg: TcpSegment, buf: memoryview, hops: int) -> bool:
        """Workers: an ACK for a flow we hold in SYN-RECEIVED that does not acknowledge
        our SYN. With the queues changing, a retransmitted SYN can reach two workers;
        both answer, the peer takes one SYN-ACK, and its ACK of that one may reach the
        other worker (it sent last, so the kernel steers the flow to it). RFC 9293 would
        answer <SEQ=SEG.ACK><CTL=RST> -- exactly the peer's RCV.NXT, which resets the
        connection the sibling just completed. Instead the ACK goes round the ring to
        the worker whose SYN it acknowledges, and our half-open connection is dropped
        without a word. The last worker of the ring answers as a lone stack would. A
        half-open connection a restarted worker restored is one too (it has no
        backlog: it was reset so, a review found)."""
        tcb = flow.conn.tcb
        if tcb.state is not TcpState.SYN_RECEIVED or seg.flags & (ACK | RST) != ACK:
            return False
        ack = Seq(seg.ack)
        if seq_lt(tcb.snd_una, ack) and seq_le(ack, tcb.snd_nxt):
            return False  # it acknowledges our SYN
        if not self._pass_on(buf, hops):
            return False
        self.stats["half_open_passed_on"] += 1
        self._remove_flow(flow)
        return True

    def _syn_replaces(self, flow: Flow, pkt: Packet) -> bool:
        """A new SYN on a flow in TIME-WAIT that RFC 6191 lets in replaces that flow."""
        record = flow.time_wait
        tcb = record.tcb if record is not None else flow.conn.tcb  # (no rebuild to ask)
        if tcb.state is not TcpState.TIME_WAIT or pkt.tcp.flags & ACK:
            return False
        if not new_syn_acceptable(tcb, pkt.tcp):
            return False
        self._remove_flow(flow)
        return True

    def _on_unknown_flow(self, pkt: Packet, now: float, buf: memoryview, hops: int) -> None:
        seg = pkt.tcp
        if pkt.dst not in self._addrs:
            self.drops[DropReason.NO_FLOW] += 1
            return
        key = (pkt.src, seg.src_port, pkt.dst, seg.dst_port)
        if key in self._fenced:
            # Another instance owns it now (G5): its late segments -- still queued on
            # our device, say -- get no RST from us, which could reset the connection
            # the new owner carries on.
            self.stats["fenced_dropped"] += 1
            return
        listener = self.listeners.get(seg.dst_port)
        if seg.flags & (SYN | ACK | RST) == SYN and listener is not None and not listener.closed:
            if listener.half_open + len(listener.queue) >= listener.backlog:
                if self._cookies is not None and len(listener.queue) < listener.backlog:
                    self._answer_with_cookie(pkt, key, listener, now)
                else:
                    self.drops[DropReason.BACKLOG_FULL] += 1
                return
            md5_key = self.md5_key_for(pkt.src)
            config = self._config(pkt.version == 6, listener.manual_commit, md5_key)
            conn = Connection.open_passive(
                seg,
                now=now,
                config=config,
                iss=self._iss(now, key),
                tsval_offset=self._rng.getrandbits(32),
            )
            flow = Flow(
                key=key,
                flow_id=flow_id_of(key, conn.tcb.iss),
                conn=conn,
                listener_port=seg.dst_port,
            )
            flow.md5_key = md5_key
            listener.half_open += 1
            flow.backlog = listener
            self.flows[key] = flow
            self.stats["passive_opens"] += 1
            self._mark(flow)
            return
        if (
            now < self._cookies_until
            and self._cookies is not None
            and seg.flags & (SYN | ACK | RST) == ACK
            and listener is not None
            and not listener.closed
            and self._open_from_cookie(pkt, key, listener, now)
        ):
            return
        if self._pass_on(buf, hops):
            return
        # RFC 9293 §3.10.7.1: a segment for a CLOSED (non-existent) connection gets a RST,
        # unless it is itself a RST. To a LISTEN port (§3.10.7.2) only one with an ACK
        # does; any other (a FIN, text without ACK) is dropped.
        self.drops[DropReason.NO_FLOW] += 1
        if seg.flags & RST or (
            not seg.flags & ACK and listener is not None and not listener.closed
        ):
            return
        if seg.flags & ACK:
            rst_seq, rst_ack, flags = seg.ack, 0, RST
        else:
            seg_len = len(seg.payload) + (1 if seg.flags & SYN else 0) + (seg.flags & 1)
            rst_seq, rst_ack, flags = 0, (seg.seq + seg_len) & 0xFFFFFFFF, RST | ACK
        packet = build_packet(
            pkt.dst,
            pkt.src,
            seg.dst_port,
            seg.src_port,
            rst_seq,
            rst_ack,
            flags,
            0,
            NO_OPTIONS,
            b"",
            offload_checksum=self._offload_checksum,
            md5_key=self.md5_key_for(pkt.src),
        )
        self.stats["rst_sent"] += 1
        self._pending_raw.append(packet)
        self._tx_wakeup.set()

    def _answer_with_cookie(
        self, pkt: Packet, key: FlowKey, listener: Listener, now: float
    ) -> None:
        """SYN-ACK a SYN that the full backlog has no room for, with a SYN cookie for its
        ISS and its options in our TSval (``tcp/syncookie.py``); nothing is kept. Without
        timestamps the cookie cannot carry window scaling and SACK: not offered then."""
        config = self._config(pkt.version == 6, listener.manual_commit, self.md5_key_for(pkt.src))
        syn, iss, offset = self._cookie_for(pkt, key, config, now)
        conn = Connection.open_passive(syn, now=now, config=config, iss=iss, tsval_offset=offset)
        for out in conn.drain().segments:  # the SYN-ACK
            self._send_raw(key, out.seq, out.ack, out.flags, out.window, out.options)
        self.stats["syn_cookies_sent"] += 1
        self._cookies_until = now + COOKIE_PERIOD * MAX_COOKIE_AGE

    def _cookie_for(
        self, pkt: Packet, key: FlowKey, config: TcpConfig, now: float
    ) -> tuple[TcpSegment, Seq, int]:
        """A SYN cookie for the SYN ``pkt``: the SYN as the cookie can give it back (its
        MSS a table value; without timestamps no window scale and no SACK), the ISS,
        and the TSval offset that puts the options in our SYN-ACK's TSval."""
        assert self._cookies is not None
        seg = pkt.tcp
        remote, rport, local, lport = key
        opts = seg.options
        iss, mss = self._cookies.make(
            now, tuple_bytes(local, lport, remote, rport), seg.seq, opts.mss
        )
        offset = self._rng.getrandbits(32)
        if opts.timestamps is not None and config.timestamps:
            wscale = opts.wscale if config.window_scaling else None
            sack = opts.sack_permitted and config.sack
            tsval = cookie_tsval(tsval_at(now, offset), wscale, sack)
            offset = (tsval - tsval_at(now, 0)) & SEQ_MASK
            return seg._replace(options=opts._replace(mss=mss)), iss, offset
        return seg._replace(options=TcpOptions(mss=mss)), iss, offset

    def _open_from_cookie(self, pkt: Packet, key: FlowKey, listener: Listener, now: float) -> bool:
        """An ACK for no flow, while cookies were sent lately: if it returns one of our
        cookies, the connection it completes (``Connection.from_syn_cookie``), handed
        to the listener; True if it did, or if the accept queue had no room for it
        (dropped, as Linux does: the peer's next segment -- its request, a resend --
        brings the cookie again; a peer that only waits to read stalls until then)."""
        assert self._cookies is not None
        seg = pkt.tcp
        remote, rport, local, lport = key
        irs = (seg.seq - 1) & SEQ_MASK
        iss = (seg.ack - 1) & SEQ_MASK
        mss = self._cookies.check(now, tuple_bytes(local, lport, remote, rport), irs, iss)
        if mss is None:
            return False
        ts = seg.options.timestamps
        if ts is not None:
            wscale, sack = options_from_tsecr(ts[1])
            offset = (ts[1] - tsval_at(now, 0)) & SEQ_MASK
        else:
            wscale, sack, offset = None, False, self._rng.getrandbits(32)
        if len(listener.queue) >= listener.backlog:
            self.drops[DropReason.BACKLOG_FULL] += 1
            return True
        syn = seg._replace(
            seq=irs,
            ack=0,
            flags=SYN,
            payload=b"",
            options=TcpOptions(
                mss=mss,
                wscale=wscale,
                sack_permitted=sack,
                timestamps=None if ts is None else (ts[0], 0),
            ),
        )
        md5_key = self.md5_key_for(pkt.src)
        config = self._config(pkt.version == 6, listener.manual_commit, md5_key)
        conn = Connection.from_syn_cookie(
            syn, seg, now=now, config=config, iss=Seq(iss), tsval_offset=offset
        )
        if conn.tcb.state is TcpState.SYN_RECEIVED:
            return False  # the ACK was not acceptable after all: as for no flow
        flow = Flow(key=key, flow_id=flow_id_of(key, conn.tcb.iss), conn=conn, listener_port=lport)
        flow.md5_key = md5_key
        self.flows[key] = flow
        self.stats["passive_opens"] += 1
        self.stats["syn_cookies_accepted"] += 1
        self._mark(flow)
        self._accept_early(flow)
        return True

    def _iss(self, now: float, key: FlowKey) -> Seq:
        remote, rport, local, lport = key
        return self._iss_of(now, local, lport, remote, rport)

    async def _timer_loop(self) -> None:
        heap = self._timer_heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] + self._skew if heap else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = self.now()
            while heap and heap[0][0] <= now:
                at, _, flow = heapq.heappop(heap)
                if flow.heap_at != at:
                    continue  # superseded: the flow has an earlier entry
                flow.heap_at = None
                due = flow.deadline_at
                if due is None or flow.closed:
                    continue  # nothing due any more (an ACK cleared the timer)
                if due > now:
                    self._arm(flow, due)  # the deadline moved later since the push
                    continue
                flow.deadline_at = None
                if flow.time_wait is not None:
                    # A frozen TIME-WAIT connection: its one timer is 2*MSL (RFC 9293
                    # §3.10.8), and it ends as the machine would, without a rebuild.
                    self.stats["time_wait_expired"] += 1
                    self._remove_flow(flow)
                    self._forget_closed()  # (no round follows: nothing to send)
                    continue
                flow.conn.on_timer(now)
                self._mark(flow)
            # Entries that would only wake this task for nothing (superseded, timer
            # cleared, flow closed) go now, not when they come due, and a flow whose
            # deadline moved later is re-armed at it. A live entry stops the sweep.
            while heap:
                at, _, flow = heap[0]
                if flow.heap_at == at:
                    due = flow.deadline_at
                    if due == at and not flow.closed:
                        break
                    heapq.heappop(heap)
                    flow.heap_at = None
                    if due is not None and not flow.closed:
                        self._arm(flow, due)
                else:
                    heapq.heappop(heap)

    def _schedule(self, flow: Flow, at: float | None) -> None:
        """Set ``flow``'s next deadline. The heap keeps one live entry per flow, never
        later than its deadline: a deadline that moves later (an ACK restarts the
        retransmission timer, a delayed ACK is followed by data) pushes nothing, the
        flow's earlier entry re-arms it when it comes due."""
        if at == flow.deadline_at:
            return
        flow.deadline_at = at
        if at is None:
            return
        heap_at = flow.heap_at
        if heap_at is not None and heap_at <= at:
            return
        self._arm(flow, at)

    def _arm(self, flow: Flow, at: float) -> None:
        """Push ``flow``'s live heap entry at ``at``."""
        flow.heap_at = at
        self._timer_seq += 1
        heapq.heappush(self._timer_heap, (at, self._timer_seq, flow))
        scope = self._timer_scope
        if scope is not None and at + self._skew < scope.deadline:
            scope.deadline = at + self._skew

    def _mark(self, flow: Flow) -> None:
        """Queue a flow for the next transmit round.

        A flow already queued needs no wakeup: whoever queued it set one (a held flow
        sets it on ``release``).
        """
        if not flow.dirty:
            flow.dirty = True
            self._dirty.append(flow)
            self._tx_wakeup.set()

    async def _async_commit_loop(self) -> None:
        """Async durability: commit whatever the rounds queued, one batch at a time."""
        while True:
            retry_at = self._store_retry_at if self._uncommitted else math.inf
            with trio.move_on_at(retry_at):
                await self._commit_wakeup.wait()
            self._commit_wakeup = trio.Event()
            items, self._uncommitted = self._uncommitted, []
            taken, self._backlog = self._backlog, 0
            if items:
                for flow in await self._commit(items):
                    flow.lot.unpark_all()
                if self._closed_flows:
                    self._forget_closed()  # (flows whose last deltas just landed)
                if self.store_error is not None:
                    self._backlog += taken  # put back, in front of the newer ones
            done, self._commit_done = self._commit_done, trio.Event()
            done.set()

    async def _transmit_loop(self) -> None:
        while True:
            retry_at = (
                self._store_retry_at
                if self._uncommitted and self.durability != "async"
                else math.inf
            )
            if retry_at == math.inf:
                await self._tx_wakeup.wait()  # the common case: no cancel scope to build
            else:
                with trio.move_on_at(retry_at):
                    await self._tx_wakeup.wait()
            self._tx_wakeup = trio.Event()
            if self._let_woken_run:
                # Tasks woken since the last round run first -- readers woken with this
                # round's bytes, writers the last round released -- so that what they
                # read, commit and answer joins this round's drain: bytes read and
                # committed by then are never stored (they were woken in the scheduler
                # batch before this task's, or in the same one). Meanwhile arrivals
                # wait (the device holds them), or the bytes of every new batch would
                # wake the reader again and be stored unread at the drain.
                # Handlers of flows accepted early (_accept_early) run until their
                # first wait for bytes, within the same budget of steps.
                held = self._arrivals_held = trio.Event()
                try:
                    steps = WOKEN_STEPS
                    while (self._let_woken_run or self._readers_woken or self._fresh) and steps:
                        steps -= 1
                        self._let_woken_run = False
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        if self._fresh:
                            self._fresh = [flow for flow in self._fresh if flow.fresh]
                finally:
                    self._arrivals_held = None
                    held.set()
                    for flow in self._fresh:
                        flow.fresh = False
                    self._fresh = []
            await self._round()

    async def _round(self) -> None:
        """Drain every marked flow, group-commit the deltas, then transmit and wake.

        In strict mode a segment leaves only once the version it ``needs_version`` is
        durable (G1, G2) -- those an earlier commit covers before this round's commit,
        the others after it (``_durable_already``) -- and while the store is
        unreachable (G7) the others are withheld
        -- the peer retransmits and nothing is acknowledged -- and the deltas are retried,
        in order, with backoff. In async mode segments leave before the commit.
        """
        self._rounds_started += 1
        dirty, self._dirty = self._dirty, []
        raw, self._pending_raw = self._pending_raw, []
        epoch = self.epoch
        items = self._uncommitted  # earlier deltas the store has not taken yet come first
        self._uncommitted = []
        queued = len(items)
        outs: list[tuple[Flow, OutSegment]] = []
        woken: list[Flow] = []
        readers: list[Flow] = []
        for flow in dirty:
            if flow.held:
                self._dirty.append(flow)  # its task resumes soon (hold/release)
                continue
            flow.dirty = False
            step = flow.conn.drain()
            if step.delta is not None:
                items.append((flow, new_flow_delta(flow.flow_id, epoch, step.delta)))
            for out in step.segments:
                outs.append((flow, out))
            events = step.events
            if events:
                self._on_events(flow, events)
                woken.append(flow)
                if flow.rx_lot and _news_for_reader(flow.conn, events):
                    readers.append(flow)
            elif flow.lot:
                woken.append(flow)  # window or buffer space may have changed
            if not flow.closed:
                conn = flow.conn
                self._schedule(flow, conn.next_deadline())
                if conn.tcb.state is TcpState.TIME_WAIT:
                    self._time_wait.append(flow)
        if self._links_pending:
            self._link_drained()
        if self.durability == "async":
            # Write-behind: the segments leave now; the deltas queue for the commit
            # task, which runs while the next rounds drain and transmit.
            self._uncommitted = items
            if items:
                fresh = items[queued:]
                self._backlog += payload_bytes(item[1] for item in fresh)
                self._backlog += ASYNC_DELTA_WEIGHT * len(fresh)
                self._commit_wakeup.set()
            await self._transmit(raw, outs, check_durable=False)
            while self._backlog > ASYNC_BACKLOG_MAX:
                # Back-pressure: the store does not keep up (or is out). Unbounded, the
                # queue would hold every byte sent meanwhile, and its commits would
                # grow until one takes longer than the store's timeout and is sent
                # again whole (an echo bench stalled so, and starved a strict server
                # sharing the Redis). Rounds wait, and so do windows and send buffers.
                self.stats["async_backlog_waits"] += 1
                await self._commit_done.wait()
        else:
            if items:
                ready, outs = _durable_already(outs)
                if ready or raw:
                    # Segments whose state an earlier commit stored (a regenerable
                    # send recorded ahead, tcp/txmap.py) need not wait for this one.
                    self.stats["segments_before_commit"] += len(ready)
                    await self._transmit(raw, ready, check_durable=False)
                    raw = []
                woken.extend(await self._commit(items))
            await self._transmit(raw, outs, check_durable=True)
        for flow in woken:
            flow.lot.unpark_all()
        for flow in readers:
            flow.rx_lot.unpark_all()
        if woken or readers:
            self._let_woken_run = True
        if self._time_wait:
            self._freeze_time_wait()
        self._rounds_done += 1
        if self._round_waiters:
            self._wake_round_waiters()
        if self._closed_flows:
            self._forget_closed()

    def _wake_round_waiters(self) -> None:
        done = self._rounds_done
        waiting = []
        for target, event in self._round_waiters:
            if done >= target:
                event.set()
            else:
                waiting.append((target, event))
        self._round_waiters = waiting

    def _link_drained(self) -> None:
        """The transactions this round drained: each member's part is in its newest delta
        (touch_together queued every member, held or not, so the drain took them all)."""
        pending, self._links_pending = self._links_pending, []
        for members in pending:
            self._links.append(tuple((flow, flow.conn.version) for flow in members))

    def _unlink_durable(self) -> None:
        """Forget the transactions whose every part is durable (or whose flows are gone)."""
        self._links = [
            link
            for link in self._links
            if any(flow.durable_version < version and not flow.closed for flow, version in link)
        ]

    def _linked_to(self, failed: set[str]) -> set[str]:
        """``failed`` and, transitively, the flows that share a transaction not yet
        durable with one of them."""
        grown = True
        while grown:
            grown = False
            for link in self._links:
                ids = {flow.flow_id for flow, _ in link}
                if not ids <= failed and not ids.isdisjoint(failed):
                    failed |= ids
                    grown = True
        return failed

    def _freeze_time_wait(self) -> None:
        """Keep the quiet TIME-WAIT connections of the last rounds as compact records
        (``tcp/timewait.py``: ~2 KB less each in the process). One whose last delta is not
        durable yet (async mode) waits for a later round; one with a task waiting on it,
        or with something to send or read, stays a connection (its next round brings it
        back here once it is quiet)."""
        waiting: list[Flow] = []
        for flow in self._time_wait:
            if flow.closed or flow.time_wait is not None:
                continue
            if flow.dirty or flow.held:
                continue  # drained again soon: its round brings it back
            conn = flow.conn
            if conn.tcb.state is not TcpState.TIME_WAIT:
                continue
            if flow.durable_version < conn.version or flow.lot or flow.rx_lot:
                waiting.append(flow)
            elif flow.freeze(self._ended_counters):
                self.stats["time_wait_frozen"] += 1
        self._time_wait = waiting

    async def _commit(self, items: list[tuple[Flow, FlowDelta]]) -> list[Flow]:
        """Group-commit ``items``; returns the flows whose durable version moved.

        A flow the store fenced off (another instance owns it, G5) is dropped here
        silently -- never reset, the new owner has it. A flow whose state the store lost
        is reset (RST) and removed. Either way the other flows of the batch are retried
        at once. If the store is unreachable, the batch is kept and retried later.
        """
        now = trio.current_time()
        if now < self._store_retry_at:
            # (in async mode rounds may have queued more meanwhile: those come after)
            self._uncommitted = items + self._uncommitted
            return []
        moved: list[Flow] = []
        while items:
            # Deltas held back during a store outage pile up, so a flow may have several,
            # in version order: the store applies them in order in the one commit.
            try:
                await self.store.commit([delta for _, delta in items])
            except (StoreUnavailable, StoreRefused) as exc:
                # (refused credentials or certificate stop a start -- a setting to fix
                # -- but a serving stack waits them out as an outage: its connections
                # go on, without a restart, once Redis takes it again)
                if self.store_error is None:
                    logger.warning("store unavailable, holding ACKs and retrying: %s", exc)
                self.store_error = exc
                self.stats["store_unavailable"] += 1
                self._store_backoff = min(
                    max(self._store_backoff * 2, STORE_RETRY_MIN), STORE_RETRY_MAX
                )
                self._store_retry_at = trio.current_time() + self._store_backoff
                self._uncommitted = items + self._uncommitted
                return moved
            except FencedOut as exc:
                items = self._drop_failed(items, exc.flow_ids, exc, reset=False)
            except FlowLost as exc:
                items = self._drop_failed(items, exc.flow_ids, exc, reset=True)
            else:
                if self.store_error is not None:
                    logger.warning("store is back; resuming")
                self.store_error = None
                self._store_backoff = 0.0
                self._store_retry_at = -math.inf
                self.stats["group_commits"] += 1
                for flow, delta in items:  # in order: a flow's last delta is its newest
                    flow.durable_version = delta.delta.version
                    if flow.lot:
                        moved.append(flow)  # (twice if twice in items: the 2nd is a no-op)
                    if flow.kept and not holds_uncommitted(flow):
                        self.release_kept(flow)
                    if flow.forget_pending and not flow.undurable():
                        flow.forget_pending = False  # closed, and now all stored
                        self._closed_flows.append(flow)
                if self._links:
                    self._unlink_durable()
                if self._withheld:
                    self._resend_withheld()
                return moved
        return moved

    def _resend_withheld(self) -> None:
        """The store took every held delta: the flows whose segments an outage withheld
        send what their peers wait for at once (``Connection.resend_withheld``) instead
        of at retransmission timers -- theirs and ours -- backed off meanwhile (G7)."""
        flows, self._withheld = self._withheld, set()
        now = self.now()
        for flow in flows:
            if not flow.closed:
                flow.conn.resend_withheld(now)
                self._mark(flow)
        self.stats["withheld_flows_resent"] += len(flows)

    def _drop_failed(
        self,
        items: list[tuple[Flow, FlowDelta]],
        flow_ids: Iterable[str],
        exc: StoreError,
        *,
        reset: bool,
    ) -> list[tuple[Flow, FlowDelta]]:
        failed = set(flow_ids) or {flow.flow_id for flow, _ in items}
        named = set(failed)
        if not reset and self._links:
            # A transaction lands whole or not at all (G4): the new owner of a fenced
            # flow replays it from its stored state, so the other flows' parts of the
            # same transactions must not land either -- a relay would forward its
            # upstream's bytes twice. Their machines are ahead of the store now; they
            # are let go as fenced too (the new owner claims them from the store). A
            # flow whose state was lost is reset instead, and never replayed: the rest
            # of its transactions land.
            failed = self._linked_to(failed)
        reasons = exc.reasons if isinstance(exc, FlowLost) else {}
        # Moot: a lost delta of a connection that had ended -- a commit on a finished or
        # reset stream, say a relay's last forward, after its record was forgotten:
        # nothing for it to land on, and no restart will ask for it. Not a fenced one:
        # another instance owns that flow, and nothing of this one may leave or count
        # as stored (G5: not even a RST its app's abort made this very round); not a
        # kept one (its record is what a restart replays: the app must learn it is
        # gone); not one let go by an earlier refusal (its error is a StoreError), nor
        # by this one (closed by this loop: its second delta -- two, after an outage --
        # is not moot either; hence the set is made first).
        moot = (
            {
                flow.flow_id
                for flow, _ in items
                if flow.closed and not flow.kept and not isinstance(flow.error, StoreError)
            }
            if reset
            else set()
        )
        for flow, item in items:
            if flow.flow_id not in failed:
                continue
            # Fenced: the store is not ours to clean up. Lost: what it still holds of
            # the flow (an older state, a part of one) is ours and of no use -- the
            # forget, epoch-checked, removes it, so that no later start restores it.
            forget = reset and flow.forgettable
            flow.forgettable = flow.forget_pending = flow.kept = False  # (once per flow)
            if flow.flow_id in moot:
                flow.durable_version = max(flow.durable_version, item.delta.version)
                flow.lot.unpark_all()  # its waiters return as for a stored delta
            elif not flow.closed or not isinstance(flow.error, StoreError):
                # (not let go already: by its earlier delta in the batch, or an earlier
                # refusal)
                error = exc
                if flow.flow_id not in named:
                    error = FencedOut(
                        f"{flow.flow_id}: let go with a flow of one of its transactions, "
                        f"which another instance owns ({', '.join(sorted(named)[:3])})",
                        [flow.flow_id],
                    )
                logger.warning("[%s] %s", flow.flow_id, reasons.get(flow.flow_id, error))
                if reset:
                    self.stats["flows_lost"] += 1
                    if not flow.closed:
                        self._send_reset(flow)
                else:
                    self.stats["flows_fenced"] += 1
                    if not flow.closed or flow.flow_id in named:
                        # (a closed partner's peer is done with it too: its late
                        # segments get what any ended connection's do)
                        fenced = self._fenced
                        fenced[flow.key] = None
                        if len(fenced) > FENCED_MEMORY:
                            del fenced[next(iter(fenced))]
                    if flow.flow_id not in named and not flow.closed:
                        if not self._partners and self._nursery is not None:
                            self._nursery.start_soon(self._settle_partners)
                        self._partners.append(flow)
                # A closed one -- a kept record, or a connection that ended this round
                # -- has its waiters woken by the error, as a live one by its removal.
                flow.error = error
                if flow.closed:
                    flow.lot.unpark_all()
                    flow.rx_lot.unpark_all()
                else:
                    self._remove_flow(flow)
            if forget:
                self._closed_flows.append(flow)
        return [item for item in items if item[0].flow_id not in failed]

    async def _settle_partners(self) -> None:
        """Reset the partners nobody took over (G4 with G5, ``_drop_failed``).

        A flow let go because a transaction shared it with a fenced one is carried on by
        the newer instance if that instance listed it at its start -- or hangs, with its
        peer, when it began after that listing (both instances served meanwhile). So,
        ``PARTNER_GRACE`` later, the store is asked: a partner whose owner epoch is still
        ours was taken by no one. It gets a RST from what its machine sent (if that is
        not the peer's RCV.NXT, the peer's challenge ACK finds no flow here and gets one
        at its own SEG.ACK: the flow is no longer treated as fenced), and its record is
        removed. Nothing of it is replayed, so nothing is forwarded twice; the peer
        learns now instead of at its timeouts.
        """
        while self._partners:  # (started by the first partner let go; ends with the last)
            await trio.sleep(PARTNER_GRACE)
            partners = list(self._partners)
            by_id = {flow.flow_id: flow for flow in partners}
            try:
                ours = await self.store.claim_many(list(by_id), self.epoch)
            except StoreError as exc:
                logger.info("could not ask the store about %d partners: %s", len(by_id), exc)
                continue  # (asked again with those let go meanwhile)
            del self._partners[: len(partners)]
            for flow_id in ours:
                flow = by_id[flow_id]
                logger.warning(
                    "[%s] reset: let go with a fenced transaction partner, and taken over "
                    "by no instance",
                    flow_id,
                )
                self.stats["partners_reset"] += 1
                self._fenced.pop(flow.key, None)
                self._send_reset(flow)
                try:
                    self._forget_send.send_nowait((flow_id, self.epoch))
                except trio.WouldBlock:
                    self.stats["forget_backlog_full"] += 1  # recovery will clean it up

    def _send_reset(self, flow: Flow) -> None:
        """RST a flow we cannot continue (RFC 9293 §3.10.7.4: <SEQ=SND.NXT><CTL=RST>)."""
        self.send_reset_at(flow.key, flow.conn.tcb.snd_nxt)

    def send_reset_at(self, key: FlowKey, seq: Seq) -> None:
        """RST the connection ``key`` at ``seq`` with the next round (recovery: one that
        cannot be restored, from its stored SND.NXT -- if that is behind the peer's
        RCV.NXT, the peer's challenge ACK meets no flow here and its RST is exact)."""
        self._send_raw(key, seq, 0, RST, 0, NO_OPTIONS)

    def _send_raw(
        self, key: FlowKey, seq: int, ack: int, flags: int, window: int, options: TcpOptions
    ) -> None:
        """A segment of no connection on ``key`` (a RST, a cookie's SYN-ACK), with the
        next round."""
        remote, rport, local, lport = key
        self._pending_raw.append(
            build_packet(
                local,
                remote,
                lport,
                rport,
                seq,
                ack,
                flags,
                window,
                options,
                b"",
                offload_checksum=self._offload_checksum,
                md5_key=self.md5_key_for(remote),
            )
        )
        self._tx_wakeup.set()

    async def _transmit(
        self,
        packets: list[OutPacket],
        outs: list[tuple[Flow, OutSegment]],
        *,
        check_durable: bool,
    ) -> None:
        offload = self._offload_checksum
        split_at = self._split_at
        withheld = 0
        for flow, out in outs:
            if check_durable and out.needs_version > flow.durable_version:
                withheld += 1  # G1/G2: its state is not durable yet; the peer retransmits
                self._withheld.add(flow)  # (and we resend once it is: _resend_withheld)
                continue
            remote, rport, local, lport = flow.key
            payload = out.payload
            gso_size = out.gso_size  # a super-segment (TcpConfig.gso_max): always split
            split = 0 < split_at <= len(payload) or gso_size > 0
            head = build_packet(
                local, remote, lport, rport, out.seq, out.ack, out.flags, out.window,
                out.options, payload, offload_checksum=offload, header_only=split,
                md5_key=flow.md5_key,
            )  # fmt: skip
            # The payload is a view of an immutable send-buffer chunk: safe to hand over.
            if split:
                packets.append((head, payload, gso_size) if gso_size else (head, payload))
            else:
                packets.append(head)
        if withheld:
            self.stats["segments_withheld"] += withheld
        if packets:
            self.stats["packets_out"] += len(packets)
            # A device that can write without waiting does so here: no trip through
            # trio's scheduler (~9 us here) per round; the rest, if any, waits.
            send_now = self._send_now
            done = send_now(packets) if send_now is not None else 0
            if done < len(packets):
                await self.device.send_batch(packets[done:] if done else packets)

    def _forget_closed(self) -> None:
        """Remove the store records of closed flows, off the transmit path."""
        closed, self._closed_flows = self._closed_flows, []
        for flow in closed:
            try:
                self._forget_send.send_nowait((flow.flow_id, self.epoch))
            except trio.WouldBlock:
                self.stats["forget_backlog_full"] += 1  # recovery will clean it up

    async def _forget_loop(self) -> None:
        """Remove closed flows from the store, as many per call as have queued up (one
        task step and one store round trip for a burst of short connections)."""
        receive = self._forget_receive
        while True:
            try:
                batch = [await receive.receive()]
            except trio.EndOfChannel:
                return
            while len(batch) < FORGET_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            # A store outage holds the batch and tries again, as commits do (G7): a
            # record left behind would be restored by the next start, and some --
            # a stream its peer reset, a kept one its app closed since -- say so
            # nowhere in it.
            delay = STORE_RETRY_MIN
            while True:
                try:
                    fenced = await self.store.forget_many(batch)
                except (StoreUnavailable, StoreRefused) as exc:  # (as _commit waits them out)
                    if delay == STORE_RETRY_MIN:
                        logger.info("could not forget %d closed flows yet: %s", len(batch), exc)
                    await trio.sleep(delay)
                    delay = min(delay * 2, STORE_RETRY_MAX)
                    continue
                except StoreError as exc:
                    logger.warning("could not forget %d closed flows: %s", len(batch), exc)
                    fenced = []
                break
            for flow_id in fenced:
                logger.info("[%s] not forgotten: a newer instance owns it", flow_id)

    def _on_events(self, flow: Flow, events: Iterable[object]) -> None:
        for event in events:
            kind = type(event)  # event classes are final: no isinstance needed
            if kind is Connected:
                flow.connected = True
                self._leave_backlog(flow)
                if flow.listener_port is not None and not flow.accepted:
                    self._offer(flow)
            elif kind is EofReceived:
                flow.eof = True
            elif kind is Reset or kind is TimedOut or kind is Aborted:
                if kind is Reset:
                    flow.reset = True
                flow.error = _error_of(flow, event)
                if kind is Aborted:
                    logger.warning("[%s] reset: %s", flow.flow_id, flow.error)
                    self.stats["reset_after_loss"] += 1
            elif kind is Closed:
                self._remove_flow(flow)

    def pending_error(self, flow: Flow) -> StcpError | None:
        """The error the next round gives ``flow`` (``flow.error``) from the events its
        machine has not reported yet: a RST that came in one batch with data closes the
        connection at once, and a send meets the closed state before the round."""
        for event in flow.conn.pending_events():
            error = _error_of(flow, event)
            if error is not None:
                return error
        return None

    def tcp_totals(self) -> Counter[str]:
        """Every connection's event counters (``TcpInfo.counters``: retransmissions,
        challenge ACKs, probes, ...) summed over this process's life."""
        totals = Counter(self._ended_counters)
        for flow in self.flows.values():
            flow.count_into(totals)
        return totals

    def _remove_flow(self, flow: Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        flow.count_into(self._ended_counters)
        if flow.forgettable and holds_uncommitted(flow):
            # TCP is done with it (a RST in TIME-WAIT, LAST-ACK's last ACK), its app is
            # not: bytes it received and has not committed are replayed after a crash
            # only from this record (G4). Kept until the app commits them or closes.
            flow.kept = True
        elif flow.forgettable:
            if flow.undurable():
                # Its last deltas are still on their way (async durability, an outage):
                # forgotten once they land (_commit), or a forget sent now would come
                # before them, and they would make the record again.
                flow.forget_pending = True
            elif flow.durable_version > 0:
                self._closed_flows.append(flow)
        flow.deadline_at = None
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        self._leave_backlog(flow)
        flow.lot.unpark_all()
        flow.rx_lot.unpark_all()

    def release_kept(self, flow: Flow) -> None:
        """A kept closed flow (``_remove_flow``) whose app committed all it received, or
        closed its stream: its record goes (once its last deltas are stored)."""
        if not flow.kept:
            return
        flow.kept = False
        if flow.undurable():
            flow.forget_pending = True
        elif flow.durable_version > 0:
            self._closed_flows.append(flow)
            self._tx_wakeup.set()

    def _leave_backlog(self, flow: Flow) -> None:
        listener = flow.backlog
        if listener is not None:
            flow.backlog = None
            listener.half_open -= 1

    def _offer(self, flow: Flow) -> None:
        """Hand an established (or restored) flow to its port's listener."""
        listener = self.listeners.get(flow.key[3])
        if listener is None or listener.closed:
            # restored, or its handshake completed after its listener closed
            self._leave_unclaimed(flow.key[3], flow)
            return
        flow.accepted = True
        if listener.deliver is not None:
            listener.deliver(flow)
            return
        listener.queue.append(flow)
        listener.lot.unpark_all()

    def now(self) -> float:
        """The machines' clock: ``time.monotonic()`` seconds (see ``clock.py``)."""
        return trio.current_time() - self._skew

    # ------------------------------------------------------------ recovery support

    @property
    def local_addresses(self) -> frozenset[bytes]:
        return frozenset(self._addrs)

    def config_for(self, key: FlowKey) -> TcpConfig:
        """The configuration of a restored connection on ``key`` (signed if its peer
        has an MD5 key: the keys are configuration, given to every start alike)."""
        if self.md5_key_for(key[0]) is not None:
            return self._signed_configs[len(key[0]) == 16, False]
        return self._config4 if len(key[0]) == 4 else self._config6

    def md5_key_for(self, remote: bytes) -> bytes | None:
        """The TCP MD5 key of the peer at packed address ``remote``, if it has one."""
        return None if self._md5 is None else self._md5.key_for(remote)

    def _config(self, ipv6: bool, manual: bool, md5_key: bytes | None) -> TcpConfig:
        return (self._configs if md5_key is None else self._signed_configs)[ipv6, manual]

    def adopt(self, flow: Flow, *, offer: bool) -> None:
        """Take in a restored flow: kick it at the first round, offer its stream -- an
        inbound one to its port's listener, an outbound one to ``reattach`` only (kept
        under port 0, which no listener has: a listener on a port that happens to be
        an outbound connection's local one took that stream, as if inbound)."""
        flow.md5_key = self.md5_key_for(flow.key[0])
        self._mark(flow)
        if offer:
            if flow.conn.tcb.active_open:
                self._leave_unclaimed(0, flow)
                return
            flow.listener_port = flow.key[3]
            self._offer(flow)

    # ------------------------------------------------------------ app support

    async def flush(self) -> None:
        """Until one more round drained, committed and sent what the app's last calls
        left -- an ``aclose()``'s FIN, say. ``open_stack`` calls it, within a time limit
        (a store that does not answer holds the round), when its block ends; the caller
        bounds the wait."""
        if not (self._dirty or self._pending_raw):
            await trio.lowlevel.checkpoint()
            return
        done = trio.Event()
        self._round_waiters.append((self._rounds_started + 1, done))
        self._tx_wakeup.set()
        await done.wait()

    def touch(self, flow: Flow) -> None:
        """An application call changed ``flow``'s machine: transmit what it produced."""
        self._mark(flow)

    def touch_together(self, flows: Iterable[Flow]) -> None:
        """``touch`` for the flows of one transaction: the next round drains all of them,
        one its reader holds (``hold``) too -- left for a later round, it put the
        transaction's deltas into two group commits, and a crash between them lost what
        a relay had forwarded (G4). The reader's ``release`` then finds nothing to do."""
        members = tuple(flows)
        for flow in members:
            if flow.held:
                flow.held = False
                self._tx_wakeup.set()
            self._mark(flow)
        if len(members) > 1:
            self._links_pending.append(members)

    def hold(self, flow: Flow) -> None:
        """``touch`` for an app call that yields right after; ``release`` once it resumes.

        A flow that no round has queued yet is left queued by the rounds until then (one
        schedule point of its task), so that what the application does next -- the
        answer to what it read -- joins the same round: a window update the read made
        due rides on the answer's segment. A flow already queued is not held: it goes
        out with the next round as usual (so a task that reads in a loop cannot hold it
        back round after round).
        """
        if not flow.dirty:
            flow.held = True
            flow.dirty = True
            self._dirty.append(flow)
        else:
            self._tx_wakeup.set()

    def reader_resumed(self, flow: Flow) -> None:
        """A reader ``_arrive`` woke runs again (``Stream.receive_some``)."""
        if flow.reader_woken:
            flow.reader_woken = False
            self._readers_woken -= 1

    def release(self, flow: Flow) -> None:
        """End ``hold``: the flow goes out with the next round."""
        if flow.held:
            flow.held = False
            self._tx_wakeup.set()

    @staticmethod
    def durable_target(flow: Flow) -> int:
        """The delta version that holds everything done on ``flow`` so far: the next
        one if its machine has changes no drain has taken yet, else the last one.

        Not "the next one if the flow is queued for a round": a flow queued again
        after the drain that took the app's changes -- by a segment that changes
        nothing to store -- would wait for a delta that never comes (a relay's
        commit on a finished upstream hung so, found by the crash fuzz, seed 530030).
        """
        conn = flow.conn
        return conn.version + (1 if conn.delta_pending() else 0)

    async def wait_durable(self, flow: Flow, target: int | None = None) -> None:
        """Wait until everything the app did on ``flow`` so far is durable (G2).

        Call it right after the app call (``app_send``/``app_commit``) and ``touch``,
        with no schedule point in between, or pass the ``target`` that
        ``durable_target`` gave then. In async durability mode this returns at once.

        Raises:
            trio.BrokenResourceError: The flow ended before it was durable -- reset, or
                let go because the store fenced it off or lost its state.
        """
        if self.durability == "async":
            await trio.lowlevel.checkpoint()
            return
        if target is None:
            target = self.durable_target(flow)
        if flow.durable_version >= target or self._settled(flow):
            await trio.lowlevel.checkpoint()
        else:
            while flow.durable_version < target and not self._settled(flow):
                await flow.lot.park()
        if flow.durable_version < target:
            error = flow.error
            why = (str(error) or type(error).__name__) if error is not None else "it was reset"
            raise trio.BrokenResourceError(
                f"the connection ended before this was durable: {why}"
            ) from error

    @staticmethod
    def _settled(flow: Flow) -> bool:
        """Whether ``flow`` will get no more durable versions: it is gone, and no delta
        of it is on its way to the store -- a connection that closed in the round that
        drained its last delta is still committed by it (``_commit`` moves its durable
        version and wakes its waiters), and a change made after its close (a commit on a
        finished stream) is drained by the next round; one the store refused (fenced,
        lost) never is."""
        return flow.closed and (isinstance(flow.error, StoreError) or not flow.pending())

    def listen(
        self, port: int, backlog: int | None = None, *, manual_commit: bool = False
    ) -> Listener:
        if not 0 < port < 65536:
            raise StcpConfigError(f"port {port} is not in 1..65535")
        if port in self.listeners and not self.listeners[port].closed:
            raise StcpConfigError(f"port {port} already has a listener on this stack")
        listener = Listener(port, backlog or self._syn_backlog, manual_commit=manual_commit)
        self.listeners[port] = listener
        for flow in self._unclaimed.pop(port, []):
            if flow.takeable:
                self._offer(flow)  # restored streams go to the app first (recovered=True)
        return listener

    def close_listener(self, listener: Listener) -> None:
        """Close ``listener``. The connections it queued and no app took wait, as
        restored ones do, for a listener on the port within the grace period -- the
        app serving again, or the next process: a stack that stops closes its
        listeners, and a stop must end no connection -- then are reset, as Linux
        resets a closed listening socket's queue (they were left open for good)."""
        listener.closed = True
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]
        queue = listener.queue
        while queue:
            flow = queue.popleft()
            if flow.takeable:
                self._leave_unclaimed(listener.port, flow)
        listener.lot.unpark_all()

    def reattach(self, flow_id: str) -> Flow:
        """Take a restored flow no listener took -- an outbound one -- by its id.

        Raises:
            LookupError: No restored flow ``flow_id`` waits here.
        """
        found = next(
            (
                (port, flow)
                for port, flows in self._unclaimed.items()
                for flow in flows
                if flow.flow_id == flow_id
            ),
            None,
        )
        if found is not None:
            port, flow = found
            flows = self._unclaimed[port]
            flows.remove(flow)
            if not flows:
                del self._unclaimed[port]
            if flow.takeable:  # (else closed meanwhile: not restored any more)
                flow.accepted = True
                return flow
        raise LookupError(
            f"no restored connection {flow_id} waits on this stack (closed, taken "
            "already, or not restored)"
        )

    def open_flow(self, remote: str, remote_port: int, *, manual_commit: bool = False) -> Flow:
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
        now = self.now()
        md5_key = self.md5_key_for(raddr)
        config = self._config(len(raddr) == 16, manual_commit, md5_key)
        conn = Connection.open_active(
            now=now, config=config, iss=self._iss(now, key), tsval_offset=self._rng.getrandbits(32)
        )
        flow = Flow(key=key, flow_id=flow_id_of(key, conn.tcb.iss), conn=conn)
        flow.md5_key = md5_key
        self.flows[key] = flow
        self.stats["active_opens"] += 1
        self._mark(flow)
        return flow


def _error_of(flow: Flow, event: object) -> StcpError | None:
    """The application's error for a machine event that ends the connection, else None."""
    if isinstance(event, Reset):
        peer = endpoint_text(*flow.remote)
        if event.refused:
            return ConnectionRefused(f"{peer} refused the connection (RST)")
        return ConnectionResetByPeer(f"{peer} reset the connection")
    if isinstance(event, TimedOut):
        peer = endpoint_text(*flow.remote)
        return ConnectionTimedOut(f"{peer} stopped answering (retransmissions exhausted)")
    if isinstance(event, Aborted):
        return ConnectionAborted(event.reason)
    return None
