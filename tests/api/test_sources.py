"""Sources of regenerable sends: files found again by name, changes refused, and
``Stream.send_from`` end to end over the simulated network with a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from stcp_framework import FileSource, SourceError, open_stack
from stcp_framework.api import Stack, Stream
from stcp_framework.link.sim import SimNetwork
from stcp_framework.services import CHARGEN_SOURCE, chargen_bytes
from stcp_framework.stack.sources import SourceRegistry
from stcp_framework.store.memory import MemoryStore
from stcp_framework.testing import CLIENT_ADDRESS, SERVER_ADDRESS, RestartableServer


def test_a_file_source_is_found_again_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789")
    with FileSource(path) as source:
        assert source.read(3, 4) == b"3456"
        assert source.read(8, 100) == b"89" and source.read(10, 5) == b""
        name = source.name
    registry = SourceRegistry()
    assert registry.read(name, 2, 5) == b"23456"


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789")
    with FileSource(path) as source:
        name = source.name
    path.write_bytes(b"0123456789abc")
    with pytest.raises(SourceError, match="changed"):
        SourceRegistry().resolve(name)
    os.unlink(path)
    with pytest.raises(SourceError, match="No such file"):
        SourceRegistry().resolve(name)


def test_unknown_sources_and_short_reads_are_errors() -> None:
    registry = SourceRegistry([CHARGEN_SOURCE])
    assert registry.read("chargen", 7000, 100) == chargen_bytes(7000, 100)
    with pytest.raises(SourceError, match="open_stack"):
        registry.resolve("nope")
    with pytest.raises(TypeError, match="not a Source"):
        SourceRegistry([object()])  # type: ignore[list-item]


def test_chargen_source_reads_any_phase() -> None:
    for offset in (0, 1, 7029, 7030, 10**9 + 3):
        for size in (1, 1000, 1_047_470):
            assert CHARGEN_SOURCE.read(offset, size) == chargen_bytes(offset, size)


async def test_send_from_a_file_survives_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A file download is regenerable: the server crashes mid-transfer, the next
    incarnation re-reads the unacknowledged part from the file, the client gets it
    byte-exact, and the store never held the file's bytes."""
    data = os.urandom(300_000)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    network = SimNetwork(5)
    store = MemoryStore()
    max_tx = 0

    async def app(stack: Stack) -> None:
        async def handler(stream: Stream) -> None:
            with FileSource(path) as source:
                await stream.send_from(source, stream.send_offset, block_size=50_000)
            await stream.send_eof()

        await stack.serve(handler, 80)

    server = RestartableServer(network, SERVER_ADDRESS, app, store=store, downtime=0.05)
    link = network.attach(CLIENT_ADDRESS)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with open_stack(link, [CLIENT_ADDRESS]) as client:
            stream = await client.connect(SERVER_ADDRESS, 80)
            got = bytearray()
            crashed = False
            while chunk := await stream.receive_some(65536):
                got += chunk
                for flow in store._flows.values():
                    max_tx = max(max_tx, flow.tx.end)
                if not crashed and len(got) > 100_000:
                    crashed = True
                    server.crash()
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert bytes(got) == data
    assert len(server.restarts) == 1
    assert max_tx == 0  # no byte of the file went to the store
