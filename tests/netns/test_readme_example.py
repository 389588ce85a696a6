"""The README's Python example, as printed there, serves echo on a real TUN device and
a real Redis, and its connection survives SIGKILL and a restart of the example.

The code is taken from README.md's one ``python`` block; only the store URL, device
name and address are replaced by the test's own (each must appear exactly once, so an
edit of the example that drops one fails here instead of going unnoticed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, Peer, RedisServer

from stcp_framework.store import keys as K

pytestmark = [pytest.mark.slow, pytest.mark.netns]

README = Path(__file__).resolve().parents[2] / "README.md"
ECHO_PORT = 7


def readme_example(store_url: str, dev: str, address: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, f"README.md has {len(blocks)} python blocks, this test reads one"
    code: str = blocks[0]
    for printed, ours in [
        ("unix:///var/lib/stcp/store/redis.sock", store_url),
        ('"stcp0"', repr(dev)),
        ('"198.18.0.2"', repr(address)),
    ]:
        assert code.count(printed) == 1, f"the README example no longer has {printed} once"
        code = code.replace(printed, ours)
    return code


@pytest.mark.timeout(90)
async def test_the_readme_example_echoes_across_a_kill9(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example(redis_server.url, tun_net.dev, tun_net.stack_addr))
    size = 16 * MB
    logs: list[Path] = []

    async def start_example() -> trio.Process:
        log = tmp_path / f"example-{len(logs)}.log"
        logs.append(log)
        with log.open("wb") as out:
            return await trio.lowlevel.open_process(
                [sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT
            )

    example = await start_example()
    try:
        async with trio.open_nursery() as nursery:
            # (SYNs sent before the example reads the device are retransmitted)
            peer = await Peer.start(nursery, "echo", tun_net.stack_addr, ECHO_PORT, size)
            with trio.fail_after(60):
                await peer.wait_offset(size // 3)
                os.kill(example.pid, signal.SIGKILL)
                await example.wait()
                example = await start_example()
                result = await peer.result()
    except BaseException as exc:
        exc.add_note("\n".join(f"{log.name}: {log.read_text()[-1500:]}" for log in logs))
        raise
    finally:
        if example.returncode is None:
            example.kill()
            await example.wait()
    assert result["error"] is None, result
    assert result["received"] == size
    assert result["mismatch_at"] is None
    # the second process claimed the instance with a new epoch (and so restored the flow)
    client = redis_server.client()
    try:
        assert int(client.get(K.epoch_key("echo")) or 0) == 2
    finally:
        client.close()
