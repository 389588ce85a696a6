"""Micro-benchmark of the TCP machine alone (not a test): ``python bench/tcp_micro.py``.

Two ``Connection``s back to back in memory, no wire parsing or building: a bulk
transfer one way (A sends, B receives) with a fake clock. Each machine call is timed
on its own during a recorded transfer; then each side's recorded inputs are replayed
against a fresh connection and timed as a whole in CPU time (the headline figures,
robust on a shared machine). All figures are the machine's cost per data segment:

* receiver: ``on_segment`` (data) + ``drain`` + ``app_receive``, per data segment;
* sender: ``app_send`` + ``on_segment`` (ACKs) + ``drain``, per data segment;
* drain: the two ``drain`` shares of the above, shown on their own.

The segments of one sender drain are delivered in batches of ``--batch`` (the runtime
drains once per received batch); ``--batch 1`` drains after every segment. Prints the
best of ``--repeat`` replays; compare ratios within one run on a shared, noisy machine
(ANCHORS.md). ``--profile`` runs cProfile over one transfer instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
from dataclasses import dataclass
from time import perf_counter, process_time

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.step import OutSegment
from stcp_framework.wire.seq import Seq
from stcp_framework.wire.tcp import TcpSegment

BLOCK = 256 * 1024  # one app_send call (a memoryview, as Stream.send_all passes)
READ_SIZE = 256 * 1024  # one app_receive call (api.stream.DEFAULT_RECEIVE_SIZE)


def _wire(out: OutSegment) -> TcpSegment:
    return TcpSegment(1, 2, out.seq, out.ack, out.flags, out.window, 0, out.options, out.payload)


@dataclass
class Result:
    """Per-call wall-clock shares of one recorded transfer (noisy under load)."""

    data_segments: int = 0
    rx_segment: float = 0.0  # B.on_segment with data
    rx_drain: float = 0.0
    rx_read: float = 0.0
    tx_send: float = 0.0
    tx_ack: float = 0.0  # A.on_segment with ACKs
    tx_drain: float = 0.0

    def per_segment(self, total: float) -> float:
        return total / self.data_segments * 1e6


# A side's inputs, recorded so that each side can be replayed alone and timed as a
# whole with CPU time (robust on a shared machine):
#   ("send", view, now)   app_send until it returns 0 or the view is consumed
#   ("segs", segs, now)   on_segment for each
#   ("read", None, now)   app_receive(READ_SIZE) until b""
#   ("drain", None, 0.0)
#   ("timer", None, now)
Script = list[tuple[str, object, float]]


def _connect(config: TcpConfig, now: float) -> tuple[Connection, Connection]:
    a = Connection.open_active(now=now, config=config, iss=Seq(2**32 - 5000), tsval_offset=7)
    syn = _wire(a.drain().segments[0])
    b = Connection.open_passive(syn, now=now, config=config, iss=Seq(123456), tsval_offset=99)
    for seg in b.drain().segments:
        a.on_segment(_wire(seg), now)
    for seg in a.drain().segments:
        b.on_segment(_wire(seg), now)
    b.drain()
    return a, b


def record(mss: int, total: int, batch: int) -> tuple[Result, Script, Script]:
    """Send ``total`` bytes from A to B; returns per-call shares and both scripts."""
    config = TcpConfig(mss=mss)
    now = 1.0
    a, b = _connect(config, now)
    block = memoryview(bytes(BLOCK))
    res = Result()
    tx: Script = []
    rx: Script = []
    queued = received = 0
    pc = perf_counter
    for _ in range(10_000_000):
        if received >= total:
            break
        while queued < total:
            view = block[: min(BLOCK, total - queued)]
            t0 = pc()
            n = a.app_send(view, now)
            res.tx_send += pc() - t0
            tx.append(("send", view, now))
            if n == 0:
                break
            queued += n
        t0 = pc()
        step = a.drain()
        res.tx_drain += pc() - t0
        tx.append(("drain", None, 0.0))
        segs = [_wire(x) for x in step.segments]
        moved = False
        for i in range(0, len(segs), batch):
            chunk = segs[i : i + batch]
            t0 = pc()
            for seg in chunk:
                b.on_segment(seg, now)
            res.rx_segment += pc() - t0
            rx.append(("segs", chunk, now))
            res.data_segments += sum(1 for seg in chunk if seg.payload)
            t0 = pc()
            while data := b.app_receive(READ_SIZE, now):
                received += len(data)
            res.rx_read += pc() - t0
            rx.append(("read", None, now))
            t0 = pc()
            bstep = b.drain()
            res.rx_drain += pc() - t0
            rx.append(("drain", None, 0.0))
            acks = [_wire(x) for x in bstep.segments]
            now += 0.00001
            t0 = pc()
            for ack in acks:
                a.on_segment(ack, now)
            res.tx_ack += pc() - t0
            tx.append(("segs", acks, now))
            moved = moved or bool(acks) or bool(chunk)
        if not moved:
            # Only a timer can move things on (delayed ACK): jump the fake clock.
            deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
            assert deadlines, "stuck"
            now = max(now, min(deadlines))
            for conn, script in ((a, tx), (b, rx)):
                deadline = conn.next_deadline()
                if deadline is not None and deadline <= now:
                    conn.on_timer(now)
                    script.append(("timer", None, now))
    else:
        raise AssertionError("transfer did not finish")
    assert received == total
    return res, tx, rx


def replay(conn: Connection, script: Script) -> float:
    """Run ``script`` against ``conn``; returns the CPU seconds it took."""
    gc.collect()
    t0 = process_time()
    for op, arg, now in script:
        if op == "segs":
            for seg in arg:  # type: ignore[attr-defined]
                conn.on_segment(seg, now)
        elif op == "drain":
            conn.drain()
        elif op == "read":
            while conn.app_receive(READ_SIZE, now):
                pass
        elif op == "send":
            view: memoryview = arg  # type: ignore[assignment]
            while view:
                n = conn.app_send(view, now)
                if not n:
                    break
                view = view[n:]
        else:
            conn.on_timer(now)
    return process_time() - t0


def report(mss: int, total: int, batch: int, repeat: int) -> None:
    res, tx, rx = record(mss, total, batch)
    segs = res.data_segments
    best_rx = best_tx = float("inf")
    for _ in range(repeat):
        a, b = _connect(TcpConfig(mss=mss), 1.0)
        best_rx = min(best_rx, replay(b, rx))
        best_tx = min(best_tx, replay(a, tx))
    drains = sum(1 for op, _, _ in rx if op == "drain")
    print(
        f"MSS {mss}, batch {batch}: {total} bytes, {segs} data segments, {drains} "
        f"receiver drains; µs per data segment"
    )
    print(f"  receiver (CPU time, best of {repeat}) {res.per_segment(best_rx):8.2f}")
    print(f"  sender   (CPU time, best of {repeat}) {res.per_segment(best_tx):8.2f}")
    rows = {
        "receiver on_segment": res.rx_segment,
        "receiver drain": res.rx_drain,
        "receiver app_receive": res.rx_read,
        "sender app_send": res.tx_send,
        "sender on_segment (ACKs)": res.tx_ack,
        "sender drain": res.tx_drain,
    }
    print("  shares (wall clock per call, one run):")
    for k, v in rows.items():
        print(f"    {k:<30} {res.per_segment(v):8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="*", default=[32, 1])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    cases = [(1460, 20_000_000), (64960, 200_000_000)]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        record(1460, 20_000_000, args.batch[0])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    for mss, total in cases:
        for batch in args.batch:
            report(mss, total, batch, args.repeat)


if __name__ == "__main__":
    main()
