"""The classic test services, written once against ``trio.abc.Stream``.

The same functions serve on stcp streams and on trio's kernel ``SocketStream``s, so
benchmarks compare the stacks, not the services.

* echo (RFC 862): send back everything received; half-close when the peer does.
* discard (RFC 863): read and throw away.
* chargen (RFC 864): send the rotating 72-character line pattern until the peer
  closes; ``chargen_byte(offset)`` tells which byte belongs at any stream offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

# zlib-ng's CRC-32 folds with PCLMULQDQ: the same values as the stdlib's zlib (the
# system's zlib 1.2, ~240 us per MB here), at ~18 us per MB.
from zlib_ng.zlib_ng import crc32

CHARGEN_LINE = 72
_PRINTABLE = bytes(range(32, 127))  # the 95 printable ASCII characters
CHARGEN_CYCLE = b"".join(
    (_PRINTABLE * 2)[i : i + CHARGEN_LINE] + b"\r\n" for i in range(len(_PRINTABLE))
)
"""One full period of the RFC 864 pattern: 95 lines of 74 bytes (7,030 bytes)."""

_CHARGEN_BLOCK = CHARGEN_CYCLE * 149  # 1,047,470 bytes: whole periods, so blocks chain
_CHARGEN_SPAN = CHARGEN_CYCLE * 150  # a block from any phase of the period is a slice
RECEIVE_SIZE = 1024 * 1024


def chargen_bytes(offset: int, length: int) -> bytes:
    """The chargen stream's bytes ``[offset, offset + length)``."""
    period = len(CHARGEN_CYCLE)
    start = offset % period
    reps = (start + length) // period + 1
    return (CHARGEN_CYCLE * reps)[start : start + length]


async def echo(stream: trio.abc.Stream) -> None:
    """RFC 862: echo every byte; when the peer half-closes, finish and close.

    On an stcp stream served with ``commit="manual"`` each answer is sent and the input
    committed in one atomic store write (``send_all_and_commit``), so across any number
    of crashes every byte is echoed exactly once: input that was not answered is
    replayed after the restart, input that was answered is not. It does not wait for
    that write (``wait_durable=False``) but reads on: the answer leaves once it is
    durable anyway, and a crash before loses answer and commit together.
    """
    atomic = getattr(stream, "send_all_and_commit", None)
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            break
        if atomic is not None:
            await atomic(data, wait_durable=False)
        else:
            await stream.send_all(data)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()


DISCARD_COMMIT_EVERY = 1 << 20  # level 2: commit (with the running CRC) every MiB


def parse_discard_state(state: bytes | None) -> tuple[int, int]:
    """``(bytes, crc32)`` from a discard commit state (``b"<bytes>:<crc32 hex>"``)."""
    if not state:
        return 0, 0
    count, _, crc = state.decode().partition(":")
    return int(count), int(crc, 16)


async def discard(stream: trio.abc.Stream, report: Callable[[str], None] | None = None) -> None:
    """RFC 863: read and drop everything until the peer closes.

    It keeps a running count and CRC-32 of what it received. On an stcp stream served
    with ``commit="manual"`` both are committed with the stream offset every MiB, or
    every half receive buffer if that is less (and at the end), so they survive
    crashes and count every byte exactly once; ``report`` gets one line with them when
    the peer closes. The commits along the way do not
    wait for the store (``commit_nowait``): nothing outside the stream depends on them,
    and a crash before one lands replays from the one before, state and all.
    """
    commit = getattr(stream, "commit", None)
    commit_nowait = getattr(stream, "commit_nowait", None)
    count, crc = parse_discard_state(getattr(stream, "state", None))
    committed = count
    # Uncommitted bytes count against the receive buffer (G6): commit well within it.
    every = min(DISCARD_COMMIT_EVERY, getattr(stream, "receive_buffer_size", 1 << 62) // 2)
    while data := await stream.receive_some(RECEIVE_SIZE):
        crc = crc32(data, crc)
        count += len(data)
        if commit_nowait is not None and count - committed >= every:
            commit_nowait(state=f"{count}:{crc:08x}".encode())
            committed = count
    if commit is not None and count != committed:
        await commit(state=f"{count}:{crc:08x}".encode())
    if report is not None:
        report(f"discard: received {count} bytes, crc32 {crc:08x}")


class ChargenSource:
    """The chargen pattern as a regenerable source (``Stream.send_from``): the byte at
    stream offset *n* is ``chargen_bytes(n, 1)``, so the store never holds it."""

    name = "chargen"
    size = math.inf  # endless: a send of it may be recorded ahead (``Stream.send_from``)

    def read(self, offset: int, size: int) -> bytes:
        start = offset % len(CHARGEN_CYCLE)
        if start == 0 and size == len(_CHARGEN_BLOCK):
            return _CHARGEN_BLOCK  # the shared object, uncopied
        if start + size <= len(_CHARGEN_SPAN):
            return _CHARGEN_SPAN[start : start + size]
        return chargen_bytes(offset, size)


CHARGEN_SOURCE = ChargenSource()
SOURCES = (CHARGEN_SOURCE,)
"""What a server running these services passes to ``open_stack(sources=...)``."""


async def chargen(stream: trio.abc.Stream) -> None:
    """RFC 864: send the character pattern until the peer goes away.

    On an stcp stream it is a regenerable send (``send_from`` with ``CHARGEN_SOURCE``):
    the store records offsets, not bytes, and a restored stream continues at
    ``stream.send_offset``, so the peer sees one unbroken pattern.
    """
    send_from = getattr(stream, "send_from", None)
    if send_from is not None:
        try:
            await send_from(
                CHARGEN_SOURCE,
                stream.send_offset,  # type: ignore[attr-defined]
                block_size=len(_CHARGEN_BLOCK),
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return
    block = _CHARGEN_BLOCK  # bytes: an stcp stream keeps the object, without a copy
    start = getattr(stream, "send_offset", 0) % len(CHARGEN_CYCLE)
    try:
        if start:
            await stream.send_all(memoryview(block)[start:])
        while True:
            await stream.send_all(block)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


SERVICES = {"echo": echo, "discard": discard, "chargen": chargen}
COMMIT_MODES = {"echo": "manual", "discard": "manual", "chargen": "auto"}
"""How ``stcp run`` serves each service: echo and discard commit explicitly (level 2)."""
DEFAULT_PORTS = {"echo": 7, "discard": 9, "chargen": 19}
