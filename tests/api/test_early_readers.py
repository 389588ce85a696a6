"""A reader waiting for data gets it as it arrives, before the round that stores it
(``Runtime._receive_loop``). At level 1 a read commits, so bytes read by then are
acknowledged by that round without ever being written to the store (the drain drops
bytes appended and trimmed in one delta); at level 2 they stay stored until the app
commits them. Either way the ACK waits for its round (G1; see tests/sim for the crash
sweeps that check it on every packet)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from api_helpers import SERVER, served_pair

from stcp_framework import MemoryStore, Stream
from stcp_framework.link.sim import SimNetwork
from stcp_framework.store.base import FlowDelta
from stcp_framework.tcp.delta import RxAppend

PORT = 9
SIZE = 300_000


class RecordingStore(MemoryStore):
    """A ``MemoryStore`` that counts the received payload bytes it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.rx_bytes = 0

    def commit_sync(self, batch: Sequence[FlowDelta]) -> None:
        for item in batch:
            self.rx_bytes += sum(len(op.data) for op in item.delta.ops if type(op) is RxAppend)
        super().commit_sync(batch)


async def _upload(commit: str, seed: int = 11, size: int = SIZE) -> tuple[int, bytes]:
    trio._core._run._r.seed(seed)  # trio's scheduler shuffles with a private generator
    net = SimNetwork(1)
    store = RecordingStore()
    received = bytearray()
    done = trio.Event()

    async def sink(stream: Stream) -> None:
        crc = 0
        while data := await stream.receive_some(1 << 20):
            crc = zlib.crc32(data, crc)  # (work between reads, as discard does)
            received.extend(data)
        done.set()

    async with served_pair(net, store, sink, port=PORT, commit=commit) as client:
        stream = await client.connect(SERVER, PORT)
        payload = random.Random(5).randbytes(size)
        await stream.send_all(payload)
        await stream.send_eof()
        with trio.fail_after(30):
            await done.wait()
        await stream.aclose()
    assert bytes(received) == payload
    return store.rx_bytes, bytes(received)


def test_bytes_read_before_their_round_are_never_stored_at_level_1() -> None:
    rx_bytes, _ = trio.run(_upload, "auto", clock=trio.testing.MockClock(autojump_threshold=0))
    # (what arrives before the handler first waits is stored the usual way)
    assert rx_bytes <= SIZE // 20


def test_at_level_2_bytes_read_stay_stored_until_committed() -> None:
    rx_bytes, _ = trio.run(_upload, "manual", clock=trio.testing.MockClock(autojump_threshold=0))
    assert rx_bytes == SIZE


@pytest.mark.parametrize("seed", range(1, 9))
def test_a_reader_keeping_up_with_a_stream_stores_none_of_it(seed: int) -> None:
    """3 MB, batch after batch: the reader is woken by each, and a round lets it run
    before the drain while new batches wait, so no batch catches it between its read
    and the drain. (Without that, 4 of these 8 scheduler orders stored 63-200 KB.)"""
    rx_bytes, _ = trio.run(
        _upload, "auto", seed, 3_000_000, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert rx_bytes <= 10 * 1448  # the first window, before the handler waits
