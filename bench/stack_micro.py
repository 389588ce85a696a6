"""Micro-benchmark of the whole stack in one process (not a test): ``python bench/stack_micro.py``.

The real ``Runtime`` with a ``MemoryStore`` and the real services (discard, chargen,
echo), but instead of a TUN device a scripted peer that behaves like a Linux client
behind an offloading TUN device: 64 KB segments (MSS 64,960, timestamps, window
scaling), ``--burst`` of them per device read, ACKs for what it received, FIN at the
end. No kernel, no second process: what is measured is the stack's own CPU time per MB,
robust on a shared machine, and with ``--profile`` a cProfile of just the stack.

Mode ``conns`` is ``bench/run.py``'s connections phase the same way: ``--conns`` short
echo connections, ``--concurrency`` at a time, each as a Linux client does it (SYN;
the handshake ACK and the 100-byte request; FIN once the echo is back; the ACK of the
server's FIN), and the stack's CPU time per connection.

Mode ``scale`` is ``bench/run.py``'s scaling phase the same way: ``--levels`` of
concurrent echo connections that stay open, ``--rounds`` timed rounds of one 100-byte
request on every connection, each echo acknowledged at once; it prints the stack's CPU
per round and per connection at each level, and the per-connection cost against the
first level's. Without the kernel, the client and the TUN device, this is the stack's
own growth with the number of connections.

The peer's own work (building and parsing packets, copying payloads) is timed
separately and subtracted: ``stack us/MB`` is process CPU time minus the peer's, per
MB moved. Compare with ``bench/run.py``'s "Server CPU per unit of work" to see how much
of the server's cost is the stack's Python and how much is the kernel (TUN reads and
writes, the peer kernel's work done in our context) and the service (CRC-32).

With the compiled core (``scripts/build_core.py``) cProfile sees the ``wire`` and ``tcp``
functions only as opaque built-ins: ``STCP_PURE=1`` profiles their Python sources
instead (slower, and weighted differently).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from stcp_framework import MemoryStore, open_stack
from stcp_framework.link.base import OutPacket
from stcp_framework.services import DEFAULT_PORTS, SERVICES, SOURCES
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script: the repo root
from bench.client import MESSAGE  # the conns phase's 100-byte request
from bench.server import tune_heap  # the same heap settings as the bench

PEER = bytes([198, 18, 0, 1])
SERVER = bytes([198, 18, 0, 2])
MTU = 65000
MSS = MTU - 40
PEER_WSCALE = 7
PEER_WINDOW = 6 << 20  # the peer's receive window (Linux tcp_rmem max)
_TCP_FIELDS = struct.Struct("!IIBBH")  # seq, ack, data offset, flags, window
_TS = struct.Struct("!II")
_MASK = 0xFFFFFFFF


class _PeerDevice:
    """The ``PacketDevice`` side of a scripted peer: hands the stack what
    ``_next_packets`` makes, feeds what the stack sends to ``_on_server_segment``, and
    times its own work (``peer_cpu``) to subtract it."""

    mtu = MTU
    rx_checksum_verified = True
    tx_checksum_offload = True
    accepts_split_packets = True
    tx_gso_max = 65535 - 40 - 60

    def __init__(self) -> None:
        self.peer_cpu = 0.0  # process time spent in this object
        self.packets_in = 0  # to the stack
        self.packets_out = 0  # from the stack
        self.done = trio.Event()
        self.go = trio.Event()  # set once the services listen
        self._wakeup = trio.Event()

    def _next_packets(self, max_packets: int) -> list[memoryview]:
        raise NotImplementedError

    def _on_server_segment(self, head: bytes | bytearray | memoryview, plen: int) -> None:
        raise NotImplementedError

    async def recv_batch(self, max_packets: int) -> list[memoryview]:
        await self.go.wait()
        while True:
            t0 = time.process_time()
            out = self._next_packets(max_packets)
            self.peer_cpu += time.process_time() - t0
            if out:
                self.packets_in += len(out)
                await trio.lowlevel.checkpoint()
                return out
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def send_batch(self, packets: Sequence[OutPacket]) -> None:
        t0 = time.process_time()
        for packet in packets:
            self.packets_out += 1
            if isinstance(packet, tuple):
                self._on_server_segment(packet[0], len(packet[1]))
            else:
                ihl = (packet[0] & 0x0F) * 4
                doff = (packet[ihl + 12] >> 4) * 4
                total = (packet[2] << 8) | packet[3]
                self._on_server_segment(packet[: ihl + doff], total - ihl - doff)
        self.peer_cpu += time.process_time() - t0
        self._wakeup.set()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class ScriptedPeer(_PeerDevice):
    """A ``PacketDevice`` that is also the client: one connection, scripted."""

    def __init__(self, mode: str, total: int, burst: int) -> None:
        super().__init__()
        self.mode = mode
        self.total = total
        self.burst = burst
        self.port = 40000
        self.iss = 1_000_000
        self.snd_nxt = self.iss  # peer's next sequence number
        self.snd_una = self.iss
        self.rcv_nxt = 0  # next byte expected from the server
        self.server_wnd = 0  # in bytes, scaled
        self.server_wscale = 0
        self.ts_recent = 0
        self.sent = 0  # payload bytes the peer sent
        self.received = 0  # payload bytes the peer received
        self.state = "syn"  # syn -> established -> fin_sent -> done
        self.ack_due = False
        self._payload = bytes(range(256)) * (MSS // 256) + bytes(MSS % 256)
        self.server_port = DEFAULT_PORTS[{"upload": "discard", "download": "chargen",
                                          "echo": "echo"}[mode]]  # fmt: skip

    # --------------------------------------------------------------- helpers

    def _packet(self, seq: int, flags: int, payload: bytes = b"",
                options: TcpOptions | None = None) -> memoryview:  # fmt: skip
        tsval = int(time.monotonic() * 1000) & _MASK
        opts = options or TcpOptions(timestamps=(tsval, self.ts_recent))
        wnd = min(PEER_WINDOW >> PEER_WSCALE, 0xFFFF) if flags & SYN == 0 else 0xFFFF
        head = build_packet(PEER, SERVER, self.port, self.server_port, seq, self.rcv_nxt,
                            flags, wnd, opts, payload, offload_checksum=True,
                            header_only=bool(payload))  # fmt: skip
        # A fresh immutable bytes object per packet, as TunDevice reads them.
        return memoryview(bytes(head) + payload if payload else bytes(head))

    def _outgoing(self) -> list[memoryview]:
        out: list[memoryview] = []
        if self.state == "syn":
            opts = TcpOptions(mss=MSS, wscale=PEER_WSCALE, sack_permitted=True,
                              timestamps=(1, 0))  # fmt: skip
            out.append(self._packet(self.iss, SYN, options=opts))
            self.snd_nxt = self.iss + 1
            self.state = "syn_sent"
            return out
        if self.state in ("established", "fin_sent") and self.mode != "download":
            while len(out) < self.burst and self.sent < self.total:
                in_flight = self.snd_nxt - self.snd_una
                if in_flight + MSS > self.server_wnd:
                    break
                n = min(MSS, self.total - self.sent)
                out.append(self._packet(self.snd_nxt & _MASK, ACK | PSH, self._payload[:n]))
                self.snd_nxt += n
                self.sent += n
            if self.sent >= self.total and self.state == "established":
                out.append(self._packet(self.snd_nxt & _MASK, ACK | FIN))
                self.snd_nxt += 1
                self.state = "fin_sent"
        if self.mode == "download" and self.received >= self.total and self.state != "done":
            out.append(self._packet(self.snd_nxt & _MASK, RST))
            self.state = "done"
            self.done.set()
            return out
        if self.ack_due and not out:
            out.append(self._packet(self.snd_nxt & _MASK, ACK))
        self.ack_due = False
        return out

    def _on_server_segment(self, head: bytes | bytearray | memoryview, plen: int) -> None:
        ihl = (head[0] & 0x0F) * 4
        seq, ack, doff, flags, window = _TCP_FIELDS.unpack_from(head, ihl + 4)
        hlen = (doff >> 4) * 4
        opts = bytes(head[ihl + 20 : ihl + hlen])
        if flags & SYN:
            parsed = parse_packet_untrusted(bytes(head), verify_checksum=False)
            self.server_wscale = parsed.tcp.options.wscale or 0
            self.rcv_nxt = (seq + 1) & _MASK
            self.state = "established"
            self.ack_due = True
        if flags & RST:
            self.state = "done"
            self.done.set()
            return
        ts_at = opts.find(b"\x08\x0a")
        if ts_at >= 0:
            self.ts_recent = _TS.unpack_from(opts, ts_at + 2)[0]
        if flags & ACK:
            acked = (ack - (self.snd_una & _MASK)) & _MASK
            if acked < 1 << 31:
                self.snd_una += acked
            if not flags & SYN:
                self.server_wnd = window << self.server_wscale
            else:
                self.server_wnd = window
        if plen and seq == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + plen) & _MASK
            self.received += plen
            self.ack_due = True
        if flags & FIN and self.state == "fin_sent":
            self.rcv_nxt = (self.rcv_nxt + 1) & _MASK
            self.ack_due = True
            self.state = "done"
            self.done.set()

    def _next_packets(self, max_packets: int) -> list[memoryview]:
        return self._outgoing() if self.state != "done" or self.ack_due else []


class _Client:
    """One scripted client connection of ``ConnsPeer``."""

    __slots__ = ("fin_sent", "port", "rcv_nxt", "received", "snd_nxt", "ts_recent")

    def __init__(self, port: int) -> None:
        self.port = port
        self.snd_nxt = (port * 2_654_435_761) & _MASK  # ISS
        self.rcv_nxt = 0
        self.ts_recent = 0
        self.fin_sent = False
        self.received = 0


class ConnsPeer(_PeerDevice):
    """A ``PacketDevice`` that is many short echo clients, ``concurrency`` at a time."""

    def __init__(self, count: int, concurrency: int) -> None:
        super().__init__()
        self.count = count
        self.concurrency = concurrency
        self.started = 0
        self.finished = 0
        self.resets = 0
        self.clients: dict[int, _Client] = {}
        self._out: list[memoryview] = []
        self._next_port = 20000
        self.server_port = DEFAULT_PORTS["echo"]

    def _send(self, c: _Client, flags: int, payload: bytes = b"",
              options: TcpOptions | None = None) -> None:  # fmt: skip
        tsval = int(time.monotonic() * 1000) & _MASK
        opts = options or TcpOptions(timestamps=(tsval, c.ts_recent))
        wnd = 0xFFFF if flags & SYN else min(PEER_WINDOW >> PEER_WSCALE, 0xFFFF)
        head = build_packet(PEER, SERVER, c.port, self.server_port, c.snd_nxt & _MASK,
                            c.rcv_nxt, flags, wnd, opts, payload, offload_checksum=True,
                            header_only=bool(payload))  # fmt: skip
        self._out.append(memoryview(bytes(head) + payload if payload else bytes(head)))
        c.snd_nxt += len(payload) + (1 if flags & (SYN | FIN) else 0)

    def _open_more(self) -> None:
        while self.started < self.count and len(self.clients) < self.concurrency:
            c = _Client(self._next_port)
            self._next_port += 1
            self.started += 1
            self.clients[c.port] = c
            syn = TcpOptions(mss=MSS, wscale=PEER_WSCALE, sack_permitted=True, timestamps=(1, 0))
            self._send(c, SYN, options=syn)

    def _finish(self, c: _Client) -> None:
        del self.clients[c.port]
        self.finished += 1
        if self.finished == self.count:
            self.done.set()

    def _client_of(self, head: bytes | bytearray | memoryview) -> tuple[_Client, int, int] | None:
        """The client a server segment is for (its timestamp noted), with the
        segment's SEQ and flags; None for a client that is gone."""
        ihl = (head[0] & 0x0F) * 4
        seq, _, doff, flags, _ = _TCP_FIELDS.unpack_from(head, ihl + 4)
        c = self.clients.get((head[ihl + 2] << 8) | head[ihl + 3])
        if c is None:
            return None
        opts = bytes(head[ihl + 20 : ihl + (doff >> 4) * 4])
        ts_at = opts.find(b"\x08\x0a")
        if ts_at >= 0:
            c.ts_recent = _TS.unpack_from(opts, ts_at + 2)[0]
        return c, seq, flags

    def _on_server_segment(self, head: bytes | bytearray | memoryview, plen: int) -> None:
        found = self._client_of(head)
        if found is not None:
            self._on_client_segment(*found, plen)

    def _on_client_segment(self, c: _Client, seq: int, flags: int, plen: int) -> None:
        if flags & RST:
            self.resets += 1
            self._finish(c)
            return
        if flags & SYN:  # SYN-ACK: complete the handshake, then the request
            c.rcv_nxt = (seq + 1) & _MASK
            self._send(c, ACK)
            self._send(c, ACK | PSH, MESSAGE)
            return
        if plen and seq == c.rcv_nxt:
            c.rcv_nxt = (c.rcv_nxt + plen) & _MASK
            c.received += plen
            if c.received >= len(MESSAGE) and not c.fin_sent:
                c.fin_sent = True  # the client closes first (TIME-WAIT on its side)
                self._send(c, ACK | FIN)
        if flags & FIN and c.fin_sent:
            c.rcv_nxt = (c.rcv_nxt + 1) & _MASK
            self._send(c, ACK)
            self._finish(c)

    def _next_packets(self, max_packets: int) -> list[memoryview]:
        self._open_more()
        out, self._out = self._out, []
        return out


class ScalePeer(ConnsPeer):
    """``bench/run.py``'s scaling phase: ``levels`` of concurrent echo connections
    that stay open; at each level a warm-up round and ``rounds`` timed rounds of one
    100-byte request on every connection, its echo acknowledged at once (as the bench
    client's ``TCP_QUICKACK``): three segments per connection and round at every level.
    ``round_cpu[level]`` is the process CPU time of each timed round minus the peer's."""

    def __init__(self, levels: Sequence[int], rounds: int) -> None:
        super().__init__(0, 0)
        self.levels = list(levels)
        self.rounds = rounds
        self.round_cpu: dict[int, list[float]] = {n: [] for n in self.levels}
        self._level = 0  # index into levels
        self._round = -1  # -1: opening; 0: warm-up; 1..rounds: timed
        self._pending = 0  # echoes (or handshakes) still awaited this round
        self._round_start = (0.0, 0.0)  # (process time, peer cpu)
        self._queued: list[memoryview] = []

    def _open_more(self) -> None:
        target = self.levels[self._level]
        # At most 512 handshakes at a time: the stack's SYN backlog drops more, and this
        # peer does not retransmit.
        while len(self.clients) < target and self._pending < 512:
            c = _Client(self._next_port)
            self._next_port += 1
            self.clients[c.port] = c
            self._pending += 1
            syn = TcpOptions(mss=MSS, wscale=PEER_WSCALE, sack_permitted=True, timestamps=(1, 0))
            self._send(c, SYN, options=syn)

    def _start_round(self) -> None:
        self._round += 1
        self._round_start = (time.process_time(), self.peer_cpu)
        self._pending = len(self.clients)
        for c in self.clients.values():
            c.received = 0
            self._send(c, ACK | PSH, MESSAGE)

    def _end_round(self) -> None:
        level = self.levels[self._level]
        if self._round >= 1:
            cpu, peer = self._round_start
            self.round_cpu[level].append(time.process_time() - cpu - (self.peer_cpu - peer))
        if self._round < self.rounds:
            self._start_round()
            return
        self._level += 1
        self._round = -1
        if self._level == len(self.levels):
            self.done.set()
        else:
            self._open_more()

    def _on_client_segment(self, c: _Client, seq: int, flags: int, plen: int) -> None:
        if flags & RST:
            raise RuntimeError(f"RST to client port {c.port}")
        if flags & SYN:  # SYN-ACK: complete the handshake
            c.rcv_nxt = (seq + 1) & _MASK
            self._send(c, ACK)
            self._pending -= 1
        elif plen and seq == c.rcv_nxt:
            c.rcv_nxt = (c.rcv_nxt + plen) & _MASK
            c.received += plen
            self._send(c, ACK)  # at once, as TCP_QUICKACK
            if c.received >= len(MESSAGE):
                self._pending -= 1
        if self._round == -1 and flags & SYN:
            self._open_more()
        if self._pending == 0:
            if self._round == -1:
                self._start_round()  # the warm-up round
            else:
                self._end_round()

    def _next_packets(self, max_packets: int) -> list[memoryview]:
        if self._out:
            self._queued.extend(self._out)
            self._out = []
        out, self._queued = self._queued[:max_packets], self._queued[max_packets:]
        return out


async def run_one(mode: str, total: int, burst: int) -> tuple[float, ScriptedPeer | ConnsPeer]:
    peer = ConnsPeer(total, burst) if mode == "conns" else ScriptedPeer(mode, total, burst)
    async with (
        open_stack(peer, ["198.18.0.2"], store=MemoryStore(), sources=SOURCES) as stack,
        trio.open_nursery() as nursery,
    ):
        for name, service in SERVICES.items():
            await nursery.start(stack.serve, service, DEFAULT_PORTS[name])
        start = time.process_time()
        peer.go.set()
        with trio.fail_after(120):
            await peer.done.wait()
            await trio.sleep(0.01)  # the last round
        cpu = time.process_time() - start
        nursery.cancel_scope.cancel()
    return cpu, peer


async def run_scale(levels: Sequence[int], rounds: int) -> ScalePeer:
    peer = ScalePeer(levels, rounds)
    async with (
        open_stack(peer, ["198.18.0.2"], store=MemoryStore(), sources=SOURCES) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, SERVICES["echo"], DEFAULT_PORTS["echo"])
        peer._open_more()
        peer.go.set()
        with trio.fail_after(300):
            await peer.done.wait()
        nursery.cancel_scope.cancel()
    return peer


def scale_table(levels: Sequence[int], rounds: int, repeat: int) -> None:
    """Median stack CPU per round at each level (best run of ``repeat``) and the
    ratio of each level's per-connection cost to the first's."""
    best: dict[int, float] = {}
    for _ in range(repeat):
        peer = trio.run(run_scale, levels, rounds)
        for level, cpus in peer.round_cpu.items():
            med = statistics.median(cpus)
            best[level] = min(best.get(level, med), med)
    first = levels[0]
    print(f"{'conns':>7} {'stack ms/round':>15} {'us/conn':>8} {'x per conn':>11}")
    for level in levels:
        per = best[level] / level
        print(f"{level:7d} {best[level] * 1e3:15.2f} {per * 1e6:8.1f} "
              f"{per / (best[first] / first):11.2f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="upload,download,echo,conns")
    ap.add_argument("--size", type=int, default=300, help="MB per run (10^6 bytes)")
    ap.add_argument("--burst", type=int, default=8, help="peer segments per device read")
    ap.add_argument("--conns", type=int, default=5000, help="connections (conns)")
    ap.add_argument("--concurrency", type=int, default=8, help="clients at a time (conns)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--profile", action="store_true", help="cProfile one run of each mode")
    ap.add_argument("--levels", default="100,1000,10000", help="connections (scale)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per level (scale)")
    args = ap.parse_args()
    tune_heap()
    if args.modes == "scale":
        levels = [int(n) for n in args.levels.split(",")]
        if args.profile:
            cProfile.runctx("trio.run(run_scale, levels, args.rounds)", globals(), locals(),
                            sort="tottime")  # fmt: skip
        else:
            scale_table(levels, args.rounds, args.repeat)
        return
    print(f"{'mode':10} {'unit':>5} {'stack us/unit':>14} {'peer us/unit':>13} "
          f"{'pkts in/unit':>13} {'pkts out/unit':>14}")  # fmt: skip
    for mode in args.modes.split(","):
        if mode == "conns":  # total: connections; burst: concurrency
            total, burst, units, unit = args.conns, args.concurrency, args.conns, "conn"
        else:
            total, burst, units, unit = args.size * 1_000_000, args.burst, args.size, "MB"
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            trio.run(run_one, mode, total, burst)
            prof.disable()
            print(f"== {mode}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            continue
        best: tuple[float, ScriptedPeer | ConnsPeer] | None = None
        for _ in range(args.repeat):
            cpu, peer = trio.run(run_one, mode, total, burst)
            stack_cpu = cpu - peer.peer_cpu
            if best is None or stack_cpu < best[0]:
                best = (stack_cpu, peer)
        assert best is not None
        stack_cpu, peer = best
        print(f"{mode:10} {unit:>5} {stack_cpu / units * 1e6:14.0f} "
              f"{peer.peer_cpu / units * 1e6:13.0f} {peer.packets_in / units:13.2f} "
              f"{peer.packets_out / units:14.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
