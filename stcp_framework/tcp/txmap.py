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
        if not self.refs:
            return ""
        return json.dumps(
            [[r.start, r.length, r.src_offset, r.name] for r in self.refs], separators=(",", ":")
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
        """Forget extents wholly below ``below`` (acknowledged); True if any went."""
        refs = self.refs
        i = 0
        while i < len(refs) and refs[i].end <= below:
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
