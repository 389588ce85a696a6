"""Regenerable sends: which outbound bytes the store holds, and which a source re-reads.

A send may name a *source* it can be read from again by offset (a file, a generator
such as chargen's pattern): ``Connection.app_send_ref``. Its bytes are then never
written to the store; a ``RefExtent`` is (stream bytes ``[start, start + length)`` =
source ``name`` from ``src_offset``). Every other byte is *literal* and goes to the
store's send stream, which holds literal bytes only, densely, at their *literal
offset*: the stream offset minus every ref byte before it. With no ref ever sent the
two offsets are equal, so the store layout does not change for ordinary flows.

The map is persisted in two TCB fields: ``tx_refs`` (the extents not yet wholly
acknowledged, JSON) and ``tx_ref_base`` (the ref bytes of extents already dropped).

*Reservation*: the last extent may be recorded longer than what was queued so far, up
to ``reserved`` (a stream offset), when the application has said it will send that
much more of the source (``Stream.send_from`` of a source with a known end, up to it
or the count). The bytes it then queues inside the reservation need no new durable
version before they leave -- the store already says what they are -- so a bulk
regenerable send is not held for a commit per round. A restore takes the recorded
extent as queued: it regenerates the whole reservation, and the application continues
at its end (``Stream.send_offset``). Anything else sent on the stream (literal bytes,
another source, a FIN) first *cuts* the reservation back to what was queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple


class RefExtent(NamedTuple):
    """Stream bytes ``[start, start + length)`` are ``name``'s bytes from ``src_offset``."""

    start: int
    length: int
    src_offset: int
    name: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(slots=True)
class TxMap:
    """The ref extents of the unacknowledged send stream (see the module docstring)."""

    refs: list[RefExtent]
    ref_base: int = 0  # length of the extents dropped (wholly acknowledged)
    reserved: int = 0  # stream offset the last extent is recorded up to (if beyond its end)
    # Not persisted: the delta versions that record the reservation up to ``reserved``
    # and, before its last extension, up to ``prior_reserved``.
    reserved_version: int = 0
    prior_reserved: int = 0
    prior_version: int = 0

    @classmethod
    def decode(cls, refs: str, ref_base: int) -> TxMap:
        """From the TCB fields ``tx_refs`` and ``tx_ref_base``.

        Raises:
            ValueError: ``refs`` is not what ``encode`` writes.
        """
        if not refs:
            return cls([], ref_base)
        try:
            items = json.loads(refs)
            return cls(
                [RefExtent(int(s), int(n), int(o), str(name)) for s, n, o, name in items], ref_base
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad tx_refs field {refs[:80]!r}") from exc

    def encode(self) -> str:
        """The ``tx_refs`` field: the extents, the last one as long as its reservation."""
        refs = self.refs
        if not refs:
            return ""
        items = [[r.start, r.length, r.src_offset, r.name] for r in refs]
        last = refs[-1]
        if self.reserved > last.end:
            items[-1][1] = self.reserved - last.start
        return json.dumps(items, separators=(",", ":"))

    def reserve(self, end: int, version: int) -> None:
        """Record the last extent up to stream offset ``end`` in delta ``version``."""
        self.prior_reserved, self.prior_version = self.reserved, self.reserved_version
        self.reserved, self.reserved_version = end, version

    def version_for(self, end: int) -> int:
        """The delta version that records the reservation of bytes up to ``end``."""
        return self.prior_version if end <= self.prior_reserved else self.reserved_version

    def unreserve(self) -> None:
        """The reservation is over (cut, or used up)."""
        self.reserved = self.reserved_version = self.prior_reserved = self.prior_version = 0

    def within_reservation(self, start: int, length: int, name: str, src_offset: int) -> bool:
        """Whether a ref send ``[start, start + length)`` of ``name`` from ``src_offset``
        continues the last extent inside its reservation (its bytes are recorded)."""
        if start + length > self.reserved or not self.refs:
            return False
        last = self.refs[-1]
        return (
            last.end == start and last.src_offset + last.length == src_offset and last.name == name
        )

    def stream_end(self, literal_end: int) -> int:
        """Stream offset of the end of the send stream whose literal bytes end at
        ``literal_end`` (ref extents after the last literal byte included)."""
        end = literal_end + self.ref_base
        for r in self.refs:
            if r.start < end:
                end += r.length
        if self.refs and self.refs[-1].end > end:
            end = self.refs[-1].end
        return end

    def literal(self, offset: int) -> int:
        """Literal offset of stream offset ``offset`` (inside a ref: of its start)."""
        n = self.ref_base
        for r in self.refs:
            if r.start >= offset:
                break
            n += min(r.length, offset - r.start)
        return offset - n

    def add(self, start: int, length: int, name: str, src_offset: int) -> None:
        """A ref send ``[start, start + length)``; extends the last extent when it
        continues it in both the stream and the source."""
        refs = self.refs
        if refs:
            last = refs[-1]
            continues = last.end == start and last.src_offset + last.length == src_offset
            if continues and last.name == name:
                refs[-1] = last._replace(length=last.length + length)
                return
        refs.append(RefExtent(start, length, src_offset, name))

    def trim(self, below: int) -> bool:
        """Forget extents wholly below ``below`` (acknowledged); True if any went. The
        last extent stays while it is reserved beyond its end (more of it will come)."""
        refs = self.refs
        n = len(refs)
        if n and self.reserved > refs[-1].end:
            n -= 1
        i = 0
        while i < n and refs[i].end <= below:
            self.ref_base += refs[i].length
            i += 1
        if i:
            del refs[:i]
        return bool(i)

    def pieces(self, start: int, end: int) -> list[tuple[int, int, RefExtent | None]]:
        """``[start, end)`` cut into (piece start, piece end, extent or None = literal)."""
        out: list[tuple[int, int, RefExtent | None]] = []
        pos = start
        for r in self.refs:
            if r.end <= pos:
                continue
            if r.start >= end:
                break
            if r.start > pos:
                out.append((pos, r.start, None))
                pos = r.start
            stop = min(r.end, end)
            out.append((pos, stop, r))
            pos = stop
        if pos < end:
            out.append((pos, end, None))
        return out
