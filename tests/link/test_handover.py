"""``link/handover.py``: a serving process hands its TUN descriptor to a standby."""

from __future__ import annotations

import os

import trio

from stcp_framework.link.handover import handover_name, offer, take

SETTINGS: dict[str, object] = {"mtu": 65000, "offload": True, "gso": True, "tx_gso": False}


async def test_a_standby_gets_a_duplicate_of_the_same_open_file() -> None:
    """What the serving process's descriptor receives, the standby's duplicate reads:
    one open file (for a TUN device, one queue), so nothing queued in between is lost."""
    name = handover_name(f"t{os.getpid()}", 0)
    reader, writer = os.pipe()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(offer, reader, name, SETTINGS)
            handed = await trio.to_thread.run_sync(take, name)
            nursery.cancel_scope.cancel()
        assert handed is not None
        assert (handed.mtu, handed.offload, handed.gso, handed.tx_gso) == (65000, True, True, False)
        assert handed.fd != reader
        os.write(writer, b"queued while the server died")
        os.close(reader)  # the serving process is gone; the standby's copy still reads
        assert os.read(handed.fd, 100) == b"queued while the server died"
        os.close(handed.fd)
    finally:
        os.close(writer)


def test_nobody_offering_is_none() -> None:
    assert take(handover_name(f"nobody{os.getpid()}", 3), timeout=0.5) is None
