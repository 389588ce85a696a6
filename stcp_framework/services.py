"""The classic test services, written once against ``trio.abc.Stream``.

The same functions serve on stcp streams and on trio's kernel ``SocketStream``s, so
benchmarks compare the stacks, not the services.

* echo (RFC 862): send back everything received; half-close when the peer does.
* discard (RFC 863): read and throw away.
* chargen (RFC 864): send the rotating 72-character line pattern until the peer
  closes; ``chargen_byte(offset)`` tells which byte belongs at any stream offset.
"""

from __future__ import annotations

import trio

CHARGEN_LINE = 72
_PRINTABLE = bytes(range(32, 127))  # the 95 printable ASCII characters
CHARGEN_CYCLE = b"".join(
    (_PRINTABLE * 2)[i : i + CHARGEN_LINE] + b"\r\n" for i in range(len(_PRINTABLE))
)
"""One full period of the RFC 864 pattern: 95 lines of 74 bytes (7,030 bytes)."""

_CHARGEN_BLOCK = CHARGEN_CYCLE * 32  # 224,960 bytes: whole periods, so blocks chain
RECEIVE_SIZE = 256 * 1024


def chargen_bytes(offset: int, length: int) -> bytes:
    """The chargen stream's bytes ``[offset, offset + length)``."""
    period = len(CHARGEN_CYCLE)
    start = offset % period
    reps = (start + length) // period + 1
    return (CHARGEN_CYCLE * reps)[start : start + length]


async def echo(stream: trio.abc.Stream) -> None:
    """RFC 862: echo every byte; when the peer half-closes, finish and close."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            break
        await stream.send_all(data)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()


async def discard(stream: trio.abc.Stream) -> None:
    """RFC 863: read and drop everything until the peer closes."""
    while await stream.receive_some(RECEIVE_SIZE):
        pass


async def chargen(stream: trio.abc.Stream) -> None:
    """RFC 864: send the character pattern until the peer goes away.

    On an stcp stream restored after a restart it continues at ``stream.send_offset``
    (every byte accepted before the crash is durable, G2), so the peer sees one unbroken
    pattern.
    """
    block = memoryview(_CHARGEN_BLOCK)
    start = getattr(stream, "send_offset", 0) % len(CHARGEN_CYCLE)
    try:
        if start:
            await stream.send_all(block[start:])
        while True:
            await stream.send_all(block)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


SERVICES = {"echo": echo, "discard": discard, "chargen": chargen}
DEFAULT_PORTS = {"echo": 7, "discard": 9, "chargen": 19}
