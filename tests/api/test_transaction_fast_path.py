"""``Transaction.apply`` takes a shortcut for one send and one commit on one stream
(``Stream.send_all_and_commit``); it must make exactly the machine calls of the general
path, so that the store sees the same deltas (versions and ops) and the peer the same
bytes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing
from api_helpers import SERVER, served_pair

from stcp_framework import MemoryStore, Stream
from stcp_framework.api.stream import Transaction
from stcp_framework.link.sim import SimNetwork
from stcp_framework.store.base import FlowDelta
from stcp_framework.tcp.delta import AppCommit

PORT = 7


class RecordingStore(MemoryStore):
    """A ``MemoryStore`` that keeps every delta it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.deltas: list[FlowDelta] = []

    def commit_sync(self, batch: Sequence[FlowDelta]) -> None:
        self.deltas.extend(batch)
        super().commit_sync(batch)


async def _echo_run(*, general: bool, commit: str) -> tuple[list[FlowDelta], bytes]:
    """Echo three messages with ``send_all_and_commit`` semantics, by either path."""
    # Both runs must schedule alike: trio shuffles runnable tasks with a private
    # generator (see tests/sim/sim_helpers.py seed_trio_scheduler).
    trio._core._run._r.seed(7)
    net = SimNetwork(1)
    store = RecordingStore()

    async def handler(stream: Stream) -> None:
        while data := await stream.receive_some(1000):
            txn = Transaction(stream._runtime)
            txn.send(stream, bytearray(data))  # not bytes: the view conversion too
            txn.commit(stream, state=b"n=%d" % stream.read_offset)
            await (txn._apply_general() if general else txn.apply())
        await stream.send_eof()

    async with served_pair(net, store, handler, port=PORT, commit=commit) as client:
        stream = await client.connect(SERVER, PORT)
        received = b""
        for message in (b"one", b"two" * 100, b"three" * 1000):
            await stream.send_all(message)
            while not received.endswith(message):
                received += await stream.receive_some(100_000)
        await stream.send_eof()
        while chunk := await stream.receive_some(100_000):
            received += chunk
        await stream.aclose()
    return store.deltas, received


@pytest.mark.parametrize("commit", ["auto", "manual"])
def test_one_stream_transaction_equals_general_path(commit: str) -> None:
    # Each run on a fresh virtual clock from the same instant: ISS and timestamps match.
    def run(general: bool) -> tuple[list[FlowDelta], bytes]:
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(lambda: _echo_run(general=general, commit=commit), clock=clock)

    fast, general = run(False), run(True)
    assert fast[1] == general[1] == b"one" + b"two" * 100 + b"three" * 1000
    assert fast[0] == general[0]
    assert any(type(op) is AppCommit for d in fast[0] for op in d.delta.ops)
