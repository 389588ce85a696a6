"""Selective acknowledgment (RFC 2018): the blocks we report and the scoreboard we keep.

Receiver side (``report_blocks``): while out-of-order data waits in the reassembly
queue, every pure ACK carries SACK blocks (RFC 2018 §4): the first names the block
holding the most recently received segment, the others repeat the blocks of earlier
arrivals, most recent first, then the rest from the highest down -- as many as fit
(3 beside timestamps, 4 without). Blocks are stream offsets here; the machine turns
them into sequence numbers.

SACKed bytes are not stored (only cumulatively acknowledged ones are, G1): a crash
forgets them, which RFC 2018 §8 allows ("reneging"); the peer keeps SACKed data until
it is cumulatively acknowledged, and a restored connection asks for it again with its
first ACK. The ack-on-commit mode reports no blocks at all: its peer's send buffer
is the replay buffer, so nothing beyond the commit point may look received.

Sender side (``Scoreboard``): the ranges above SND.UNA the peer reported, used in fast
recovery to retransmit every hole once, as proportional rate reduction lets segments
out (RFC 6937; RFC 6675 §4 NextSeg rule 1: the first un-SACKed bytes below the highest
SACKed byte, above the highest retransmitted one), instead of NewReno's one hole per
round trip (RFC 6582); ``pipe`` is RFC 6675's count of the bytes in flight. A
duplicate ACK is one that SACKs new bytes, cumulative or not (RFC 6675 §2, §5): a
D-SACK alone is none. After a retransmission timeout go-back-N skips the SACKed
ranges (RFC 6675 §5.1); the first timeout keeps the scoreboard, as Linux does, a
second in a row clears it (RFC 2018 §8: the receiver may have reneged).
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter

_start = itemgetter(0)  # a block's start: the bisection key
DUP_THRESH = 3  # RFC 5681 §3.2 duplicate ACKs, RFC 6675 DupThresh
MAX_BLOCKS = 4  # 2 + 8*4 = 34 option bytes; beside timestamps (12) only 3 fit in 40
MAX_BLOCKS_WITH_TS = 3
MAX_BLOCKS_WITH_MD5 = 2  # beside an MD5 signature (20), and none beside it and timestamps
RECENT = 4  # recent out-of-order arrivals remembered for block order
SCOREBOARD_MAX_RANGES = 1024
"""SACKed ranges the sender keeps at most (``Scoreboard.update``): a receiver that SACKs
single bytes could otherwise split it without limit -- the CPU cost of Linux's
CVE-2019-11477/11478 -- and every ACK walks it."""
_INF = float("inf")


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``[start, end)`` ranges with adjacent and overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def report_blocks(
    held: list[tuple[int, int]], recent: list[int], max_blocks: int
) -> list[tuple[int, int]]:
    """The SACK blocks to send, as stream offsets (RFC 2018 §4).

    Args:
        held: The reassembly queue's ranges ``[start, end)`` (any order, may touch).
        recent: Offsets of recent out-of-order arrivals, most recent first.
        max_blocks: How many fit beside the other options.
    """
    return report_merged(merge_ranges(held), recent, max_blocks)


def report_merged(
    blocks: list[tuple[int, int]], recent: list[int], max_blocks: int
) -> list[tuple[int, int]]:
    """``report_blocks`` for ranges merged already (sorted, disjoint, not touching:
    ``Reassembly.blocks``), in O(log n) per recent arrival."""
    chosen: list[tuple[int, int]] = []
    for offset in recent:
        i = bisect_right(blocks, offset, key=_start) - 1
        if i >= 0 and offset < blocks[i][1]:
            block = blocks[i]
            if block not in chosen:
                chosen.append(block)
    for block in reversed(blocks):
        if len(chosen) >= max_blocks:
            break
        if block not in chosen:
            chosen.append(block)
    return chosen[:max_blocks]


def note_arrival(recent: list[int], offset: int) -> None:
    """Remember an out-of-order arrival at ``offset`` as the most recent one."""
    if offset in recent:
        recent.remove(offset)
    recent.insert(0, offset)
    del recent[RECENT:]


class Scoreboard:
    """Stream-offset ranges above SND.UNA that the peer reported received (RFC 6675 §3).

    Attributes:
        ranges: The SACKed ``[start, end)`` offsets: sorted, disjoint, not touching.
        high_rxt: Offset after the last byte retransmitted in this recovery (HighRxt).
        resent: This recovery's retransmissions ``[start, end, mark)``: ``mark`` is
            SND.NXT when it left, so a SACK above it means something sent later
            arrived first (``lost_resend``).
        probe_end: SND.NXT after a tail loss probe until an ACK covers it (-1: no probe
            out; RFC 8985 TLP.end_seq).
        probe_resent: That probe resent the last segment (TLP.is_retrans).
    """

    __slots__ = ("high_rxt", "probe_end", "probe_resent", "ranges", "resent")

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []  # sorted, disjoint, not touching
        self.high_rxt = 0
        self.resent: list[list[int]] = []
        self.probe_end = -1
        self.probe_resent = False

    def update(self, una: int, nxt: int, blocks: list[tuple[int, int]]) -> bool:
        """Add reported ``[start, end)`` blocks; returns whether anything new was SACKed.

        Blocks are clamped to ``(una, nxt]``; ones at or below ``una`` (D-SACK, RFC 2883,
        or stale) and empty ones are ignored.
        """
        before = self.sacked_bytes()
        added = list(self.ranges)
        for start, end in blocks:
            start = max(start, una)
            end = min(end, nxt)
            if start < end:
                added.append((start, end))
        merged = merge_ranges(added)
        if len(merged) > SCOREBOARD_MAX_RANGES:
            # The lowest ones count for the holes to resend first; SACK information
            # is advisory (RFC 2018 §8), and what is left out is at most resent.
            del merged[SCOREBOARD_MAX_RANGES:]
        self.ranges = merged
        return self.sacked_bytes() > before

    def trim(self, una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        ranges = self.ranges
        if ranges and ranges[0][0] < una:
            self.ranges = [(max(s, una), e) for s, e in ranges if e > una]
        if self.resent and self.resent[0][1] <= una:
            self.resent = [r for r in self.resent if r[1] > una]

    def clear(self) -> None:
        self.ranges = []
        self.end_recovery()

    def end_recovery(self) -> None:
        self.high_rxt = 0
        self.resent = []

    def lost_resend(self, una: int, nxt: int) -> tuple[int, int] | None:
        """A retransmission of this recovery that was lost in its turn: bytes sent
        after it (new data, above its ``mark``) were SACKed while it is neither
        acknowledged nor SACKed. Returns the first un-SACKed range of it and moves its
        mark to ``nxt`` (it is sent again now), or ``None``. Linux detected lost
        retransmissions this way before RACK (``tcp_mark_lost_retrans``); without it,
        only a retransmission timeout finds them."""
        highest = self.highest()
        found: tuple[int, int] | None = None
        keep: list[list[int]] = []
        for record in self.resent:
            start, end, mark = record
            if end <= una:
                continue  # acknowledged
            if found is not None or highest <= mark:
                keep.append(record)
                continue
            pos = max(start, una)
            ranges = self.ranges
            i = bisect_right(ranges, (pos, _INF))  # ranges[i - 1]: the last starting <= pos
            if i and ranges[i - 1][1] > pos:
                pos = ranges[i - 1][1]  # (ranges do not touch: ranges[i] starts above it)
            if pos >= end:
                continue  # SACKed: it arrived
            record[2] = nxt
            keep.append(record)
            following = ranges[i][0] if i < len(ranges) else end
            found = (pos, min(end, following))
        self.resent = keep
        return found

    def pipe(self, una: int, nxt: int, lost_above: int) -> int:
        """Bytes in flight (RFC 6675 SetPipe): of ``[una, nxt)``, those neither SACKed
        nor deemed lost, plus the lost ones resent in this recovery (below
        ``high_rxt``)."""
        total = 0
        above = self.sacked_bytes()
        pos = una
        high_rxt = self.high_rxt
        for s, e in self.ranges:
            if s > pos:
                if above > lost_above:  # a hole deemed lost: only its resent part
                    resent_end = high_rxt if high_rxt < s else s
                    if resent_end > pos:
                        total += resent_end - pos
                else:
                    total += s - pos
            above -= e - s
            if e > pos:
                pos = e
        return total + (nxt - pos if nxt > pos else 0)

    def sacked_bytes(self) -> int:
        return sum(e - s for s, e in self.ranges)

    def highest(self) -> int:
        """Offset after the highest SACKed byte (0 when nothing is SACKed)."""
        return self.ranges[-1][1] if self.ranges else 0

    def next_hole(self, start: int, lost_above: int) -> tuple[int, int] | None:
        """The first un-SACKed range at or after ``start`` that is deemed lost, or ``None``
        (RFC 6675 NextSeg rule 1).

        A byte is deemed lost (RFC 6675 IsLost) when more than ``lost_above`` bytes above
        it are SACKed -- ``(DupThresh - 1) * SMSS``: a hole that only reordering made
        is not resent before three segments have overtaken it.
        """
        above = self.sacked_bytes()  # SACKed bytes from the current range on
        pos = start
        for s, e in self.ranges:
            if s > pos:
                return (pos, s) if above > lost_above else None
            above -= e - s
            if e > pos:
                pos = e
        return None
