"""A window that opened while the server was down, learnt at once after a restart that
follows another within 500 ms (a Linux client; ``Connection.restore``'s window probe).

The client stops reading a chargen download until its window is shut. The server is
killed and restarted: its restore probes the shut window and the client answers. It is
killed again at once; while it is down the client reads everything buffered, and its
window update meets a device nobody reads (dropped). The second restore must learn the
open window from its probe. A zero-length probe <SEQ=SND.UNA-1> got no answer: Linux
answers such out-of-window segments at most once per 500 ms per socket
(``tcp_oow_rate_limited``, ``net.ipv4.tcp_invalid_ratelimit``), so the download waited
for the restored persist timer, 1 s. The byte at SND.UNA is a segment with data, which
Linux always answers.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, RedisServer, report, server_for

pytestmark = [pytest.mark.slow, pytest.mark.netns]

CHARGEN_PORT = 19


def _drain(sock: socket.socket, quiet: float) -> int:
    """Read until nothing comes for ``quiet`` seconds; returns the bytes read."""
    sock.settimeout(quiet)
    total = 0
    try:
        while data := sock.recv(1 << 20):
            total += len(data)
    except TimeoutError:
        pass
    return total


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(60)
async def test_a_window_opened_while_down_is_learnt_at_once_after_a_quick_second_restart(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = server_for("chargen", CHARGEN_PORT, tun_net, redis_server, tmp_path)
    async with server.session():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        try:
            sock.settimeout(10)
            await trio.to_thread.run_sync(sock.connect, (tun_net.stack_addr, CHARGEN_PORT))
            got = 0
            while got < 4 * MB:
                got += len(await trio.to_thread.run_sync(sock.recv, 1 << 20))
            await trio.sleep(0.5)  # not reading: the client's window shuts
            await server.restart()  # its probe is answered: the window is still shut
            await server.kill()  # at once: the next probe comes within 500 ms
            drained = await trio.to_thread.run_sync(_drain, sock, 0.05)
            assert drained > 0  # the window opened while the server was down
            life = await server.start()
            assert life.restored == 1
            sock.settimeout(5)
            first = await trio.to_thread.run_sync(sock.recv, 1 << 20)
            arrived = time.monotonic()
            assert first
        finally:
            sock.close()
    delay = arrived - life.serving_at
    report("window probe after a quick second restart", [f"new data {delay:.3f} s after serving"])
    # The persist timer of a restored flow is 1 s: well below it, the probe was answered.
    assert delay < 0.5, f"new data {delay:.3f} s after the restarted server served"
