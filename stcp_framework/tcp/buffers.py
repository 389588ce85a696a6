"""Stream buffers indexed by unbounded stream offsets (byte 0 = first byte after the SYN).

Payloads are kept as immutable ``bytes`` chunks, so a ``memoryview`` handed out in an
``OutSegment`` stays valid however long the driver holds it (a resizable ``bytearray``
could not be appended to while a view of it is alive). Each payload is copied once on
the way in (``bytes(view)``; the same object then also goes into the delta op) and
sliced without copying on the way out whenever the slice lies inside one chunk.

Sequence number <-> offset conversions live here (STYLE.md §7).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from operator import itemgetter

from ..wire.seq import Seq, seq_add, seq_diff


def seq_to_offset(s: Seq, ref_seq: Seq, ref_offset: int) -> int:
    """Offset of ``s`` given that ``ref_seq`` sits at ``ref_offset`` (|distance| < 2**31)."""
    return ref_offset + seq_diff(s, ref_seq)


def offset_to_seq(offset: int, ref_seq: Seq, ref_offset: int) -> Seq:
    """Seq of ``offset`` given that ``ref_seq`` sits at ``ref_offset``."""
    return seq_add(ref_seq, offset - ref_offset)


class SendBuffer:
    """Unacknowledged + unsent outbound bytes ``[base_offset, end_offset)``."""

    __slots__ = ("_chunks", "_head", "_starts", "base_offset", "end_offset")

    def __init__(self, base_offset: int = 0) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []
        self._head = 0
        self.base_offset = base_offset
        self.end_offset = base_offset

    def __len__(self) -> int:
        return self.end_offset - self.base_offset

    def append(self, data: bytes) -> int:
        """Append ``data``; returns its start offset."""
        start = self.end_offset
        if data:
            self._chunks.append(data)
            self._starts.append(start)
            self.end_offset = start + len(data)
        return start

    def view(self, offset: int, size: int) -> bytes | memoryview:
        """Bytes ``[offset, offset+size)``: a zero-copy view when inside one chunk."""
        assert self.base_offset <= offset and offset + size <= self.end_offset
        if size <= 0:
            return b""
        starts = self._starts
        i = bisect_right(starts, offset, self._head) - 1
        chunk = self._chunks[i]
        rel = offset - starts[i]
        if rel + size <= len(chunk):
            if rel == 0 and size == len(chunk):
                return chunk
            return memoryview(chunk)[rel : rel + size]
        parts: list[bytes | memoryview] = []
        remaining = size
        while remaining > 0:
            chunk = self._chunks[i]
            piece = memoryview(chunk)[rel : rel + remaining]
            parts.append(piece)
            remaining -= len(piece)
            rel = 0
            i += 1
        return b"".join(parts)

    def trim(self, below: int) -> None:
        """Forget bytes below ``below`` (acknowledged)."""
        if below <= self.base_offset:
            return
        below = min(below, self.end_offset)
        self.base_offset = below
        chunks, starts = self._chunks, self._starts
        head = self._head
        n = len(chunks)
        while head < n and starts[head] + len(chunks[head]) <= below:
            head += 1
        if head >= 64 and head * 2 >= n:
            del chunks[:head]
            del starts[:head]
            head = 0
        self._head = head


_NO_CHUNKS: deque[bytes | memoryview] = deque()  # never appended to (RecvBuffer.append)


class RecvBuffer:
    """In-order inbound bytes ``[read_offset, end_offset)`` not yet read by the app.

    ``commit_offset <= read_offset``: bytes from ``commit_offset`` on still occupy the
    receive window (G6) -- with level-2 commits (``manual_commit``), bytes read but not
    committed stay in the store for replay; in level 1 every read commits, so the two
    offsets move together. Bytes already read are not kept here (the store has them),
    unless ``keep_read``: ACK-on-commit with level 2, where nothing is stored unless the
    machine spills ``[commit_offset, end_offset)`` (``pieces_from``).
    """

    __slots__ = ("_chunks", "_first_pos", "_held", "commit_offset", "end_offset", "read_offset")

    def __init__(self, read_offset: int = 0, *, keep_read: bool = False) -> None:
        # bytes, or large views of immutable bytes (_arrive.keep_payload); the shared
        # empty _NO_CHUNKS while nothing is buffered (an empty deque is ~0.7 KB: idle
        # connections hold none)
        self._chunks: deque[bytes | memoryview] = _NO_CHUNKS
        self._first_pos = 0  # bytes of _chunks[0] already read
        # keep_read: (start offset, chunk) of whole chunks read but maybe not committed
        self._held: deque[tuple[int, bytes | memoryview]] | None = deque() if keep_read else None
        self.read_offset = read_offset
        self.commit_offset = read_offset
        self.end_offset = read_offset

    def __len__(self) -> int:
        return self.end_offset - self.read_offset

    def append(self, data: bytes | memoryview) -> None:
        if data:
            chunks = self._chunks
            if chunks is _NO_CHUNKS:
                chunks = self._chunks = deque()
            chunks.append(data)
            self.end_offset += len(data)

    def read(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes``; a whole chunk is returned uncopied."""
        n = min(max_bytes, self.end_offset - self.read_offset)
        if n <= 0:
            return b""
        chunks = self._chunks
        first = chunks[0]
        pos = self._first_pos
        held = self._held
        if pos == 0 and len(first) == n:
            chunks.popleft()
            if not chunks:
                self._chunks = _NO_CHUNKS
            if held is not None:
                held.append((self.read_offset, first))
            self.read_offset += n
            return first if type(first) is bytes else bytes(first)
        parts: list[bytes | memoryview] = []
        remaining = n
        at = self.read_offset - pos  # stream offset of chunks[0]
        while remaining > 0:
            first = chunks[0]
            avail = len(first) - pos
            if avail <= remaining:
                parts.append(memoryview(first)[pos:] if pos else first)
                chunks.popleft()
                if held is not None:
                    held.append((at, first))
                at += len(first)
                remaining -= avail
                pos = 0
            else:
                parts.append(memoryview(first)[pos : pos + remaining])
                pos += remaining
                remaining = 0
        self._first_pos = pos
        self.read_offset += n
        if not chunks:
            self._chunks = _NO_CHUNKS
        if len(parts) == 1:
            return bytes(parts[0])
        return b"".join(parts)

    def release(self, below: int) -> None:
        """``keep_read``: forget read bytes below ``below`` (committed)."""
        held = self._held
        while held and held[0][0] + len(held[0][1]) <= below:
            held.popleft()

    def pieces_from(self, offset: int) -> list[tuple[int, bytes | memoryview]]:
        """(offset, bytes) pieces covering ``[offset, end_offset)``; ``offset`` must not
        be below ``read_offset`` unless ``keep_read`` holds the bytes from there."""
        out: list[tuple[int, bytes | memoryview]] = []

        def take(start: int, chunk: bytes | memoryview) -> None:
            stop = start + len(chunk)
            if stop > offset:
                piece = chunk if start >= offset else chunk[offset - start :]
                out.append((max(start, offset), piece))

        if offset < self.read_offset:
            assert self._held is not None, "read bytes are not kept"
            for start, chunk in self._held:
                take(start, chunk)
            partial = self.read_offset - self._first_pos
            if self._first_pos and self._chunks and partial < self.read_offset:
                take(partial, self._chunks[0][: self._first_pos])
        at = self.read_offset
        for i, chunk in enumerate(self._chunks):
            if i == 0 and self._first_pos:
                chunk = chunk[self._first_pos :]
            take(at, chunk)
            at += len(chunk)
        return out


PIECE_OVERHEAD = 256
"""What ``Reassembly`` charges per piece held beside its bytes: its tuple, offset and
``bytes`` header (~120 bytes in CPython), rounded up. A window of full-sized segments
(1,460 bytes) is charged 1.18x its bytes; one of single bytes, 257x."""


_start = itemgetter(0)  # a range's or block's start: the bisection key


class Reassembly:
    """Out-of-order inbound ranges (RFC 9293 §3.10.7.4 step 7 "queue for later").

    Ranges are kept sorted and disjoint; overlapping retransmissions keep the bytes
    already held. ``fin_offset`` remembers an out-of-order FIN. ``blocks`` is their union
    -- sorted, disjoint, not touching: the SACK blocks (``sack.report_merged``) -- kept
    up to date by every change, so an ACK finds its blocks by bisection, not by merging
    every range held (which a peer could make ~30,000 one-byte pieces).
    """

    __slots__ = ("_ranges", "blocks", "fin_offset", "max_charge", "size")

    def __init__(self, max_charge: int = 1 << 62) -> None:
        self._ranges: list[tuple[int, bytes]] = []
        self.blocks: list[tuple[int, int]] = []
        self.fin_offset: int | None = None
        self.size = 0
        self.max_charge = max_charge

    def __bool__(self) -> bool:
        return bool(self._ranges) or self.fin_offset is not None

    def ranges(self) -> list[tuple[int, int]]:
        return [(s, s + len(d)) for s, d in self._ranges]

    def set_fin(self, offset: int) -> None:
        """An out-of-order FIN at ``offset``: the stream ends there, so what is held past
        it goes, and nothing past it is taken later (the first FIN stands: a broken
        peer's second one, elsewhere, changes nothing)."""
        if self.fin_offset is not None:
            return
        self.fin_offset = offset
        kept: list[tuple[int, bytes]] = []
        for s, d in self._ranges:
            if s + len(d) <= offset:
                kept.append((s, d))
            else:
                if s < offset:
                    kept.append((s, d[: offset - s]))
                self.size -= len(d) - max(0, offset - s)
        self._ranges = kept
        self._blocks_below(offset)

    def _blocks_below(self, top: int) -> None:
        """Cut ``blocks`` at ``top``: the ranges above it are gone."""
        blocks = self.blocks
        while blocks and blocks[-1][0] >= top:
            blocks.pop()
        if blocks and blocks[-1][1] > top:
            blocks[-1] = (blocks[-1][0], top)

    def _add_block(self, start: int, end: int) -> None:
        """``blocks`` |= [start, end)."""
        blocks = self.blocks
        i = bisect_right(blocks, start, key=_start) - 1
        if i < 0 or blocks[i][1] < start:
            i += 1  # the block before ends short of ``start``: not joined
        j = bisect_right(blocks, end, key=_start)  # those starting at or below end
        if i < j:
            start = min(start, blocks[i][0])
            end = max(end, blocks[j - 1][1])
        blocks[i:j] = [(start, end)]

    def insert(self, offset: int, data: bytes | memoryview) -> bool:
        """Hold ``data`` at ``offset``; only parts not already held are copied, and none
        past an out-of-order FIN. Each piece held is charged its bytes plus
        ``PIECE_OVERHEAD`` (its objects), as Linux charges an skb's truesize; past
        ``max_charge`` the highest pieces go (RFC 2018 §8 lets a receiver drop what it
        SACKed; Linux prunes its out-of-order queue so, tcp_prune_ofo_queue). The window
        bounds the bytes, not the pieces: a peer sending single bytes at every other
        offset made each a piece of ~120 bytes of objects, 30x the window's memory.

        Returns whether any byte was new (pruned at once or not: not a duplicate)."""
        end = offset + len(data)
        fin = self.fin_offset
        if fin is not None and end > fin:
            end = fin
        if end <= offset:
            return False
        ranges = self._ranges
        # The ranges before the last one starting at or below ``offset`` end below it.
        i = bisect_right(ranges, offset, key=_start) - 1
        if i < 0:
            i = 0
        new: list[tuple[int, bytes]] = []
        pos = offset
        j = i
        while j < len(ranges):
            s, d = ranges[j]
            e = s + len(d)
            if s >= end:
                break
            if s > pos:
                new.append((pos, bytes(data[pos - offset : s - offset])))
            if e > pos:
                pos = e
            j += 1
            if pos >= end:
                break
        if pos < end:
            new.append((pos, bytes(data[pos - offset : end - offset])))
        if not new:
            return False
        ranges[i:j] = sorted(ranges[i:j] + new, key=_start)
        self.size += sum(len(d) for _, d in new)
        self._add_block(offset, end)
        if self.size + PIECE_OVERHEAD * len(ranges) > self.max_charge:
            while ranges and self.size + PIECE_OVERHEAD * len(ranges) > self.max_charge:
                self.size -= len(ranges.pop()[1])
            if ranges:
                top, data = ranges[-1]
                self._blocks_below(top + len(data))
            else:
                self.blocks = []
        return True

    def pop_from(self, offset: int) -> list[bytes]:
        """Remove and return the chunks that continue the stream at ``offset``.

        Ranges wholly below ``offset`` are dropped; a range straddling it is trimmed.
        """
        out: list[bytes] = []
        ranges = self._ranges
        i = 0
        while i < len(ranges):
            s, d = ranges[i]
            e = s + len(d)
            if s > offset:
                break
            self.size -= len(d)
            if e > offset:
                out.append(d if s == offset else d[offset - s :])
                offset = e
            i += 1
        if i:
            del ranges[:i]
            blocks = self.blocks
            k = bisect_right(blocks, offset, key=_start)  # consumed or dropped
            del blocks[:k]
        return out
