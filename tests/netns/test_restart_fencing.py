"""G5 with real processes: two instances claim the same flow; the stale one is fenced off.

Only one process at a time can hold a TUN device, so a second instance cannot take over
the device of a frozen first one (it gets a one-line error, G8). The realistic takeover
is the one DESIGN.md describes for relocation: the new instance runs on another device
and the traffic of the flow is steered to it (here a /32 route in the private namespace,
the single-host form of policy routing).

1. Instance A (``--instance t1``) serves echo on device A; a kernel client echoes.
2. A is frozen (``SIGSTOP``) mid-transfer, still holding device A and a queue of the
   client's data on it.
3. Instance B, same ``--instance t1``, starts on device B with A's address; the route to
   that address now points to device B. B takes a newer epoch, claims and restores the
   flow, and the transfer continues through B.
4. A is thawed (``SIGCONT``): it reads the queued data and must store it -- the store
   refuses the stale epoch (``FencedOut``), and A drops the flow silently (no RST).

The client must finish byte-exact without an error; A's counters show the refused write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, Peer, RedisServer, StcpServer, report, stcp_command

from stcp_framework.cli.netns import run_ip

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(90)]

PORT = 7
SIZE = 100 * MB
FREEZE_AT = 20 * MB
SETTLE = 0.1  # seconds for the client's data to queue up on A's device after the freeze


async def test_second_instance_fences_off_a_frozen_first_one(
    make_tun_net: Callable[..., TunNet], redis_server: RedisServer, tmp_path: Path
) -> None:
    tun_a = make_tun_net(mtu=65000)
    tun_b = make_tun_net(mtu=65000)
    listen = f"{tun_a.stack_addr}:{PORT}"
    a = StcpServer("echo", tun_a.dev, listen, redis_server.url, tmp_path / "a")
    b = StcpServer("echo", tun_b.dev, listen, redis_server.url, tmp_path / "b")
    try:
        await a.start()
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(nursery, "echo", tun_a.stack_addr, PORT, SIZE)
            with trio.fail_after(60):
                await peer.wait_offset(FREEZE_AT)
                a.pause()
                await trio.sleep(SETTLE)
                # B cannot take the device A still holds: one clear line (G8).
                busy = await trio.run_process(
                    stcp_command("run", "echo", "--dev", tun_a.dev, "--listen", listen,
                                 "--store", redis_server.url, "--instance", "t1"),
                    capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
                # Steer the flow's traffic to device B, then start B there.
                run_ip("route", "add", f"{tun_a.stack_addr}/32", "dev", tun_b.dev)
                life_b = await b.start()
                frozen_at = peer.offset
                await peer.wait_offset(frozen_at + 10 * MB)  # B carries the transfer
                a.resume()
                result = await peer.result()
        # A stores the queued data (strict) in its first round after the thaw; wait for
        # that refusal in case B has finished first.
        for _ in range(100):
            if "owner epoch" in a.current.stderr_path.read_text():
                break
            await trio.sleep(0.05)
        counters_a = await a.stop()
        counters_b = await b.stop()
    except BaseException as exc:
        exc.add_note(a.stderr_tail() + "\n" + b.stderr_tail())
        raise
    finally:
        await a.aclose()
        await b.aclose()
    stderr_a = a.current.stderr_path.read_text()
    report(
        "two instances, one flow",
        [
            f"A epoch {a.current.epoch}, B epoch {life_b.epoch} "
            f"({life_b.restored} restored, {life_b.start_seconds:.3f} s exec -> serving)",
            "A: " + ", ".join(f"{k}={v}" for k, v in sorted(counters_a.items())),
            "B: " + ", ".join(f"{k}={v}" for k, v in sorted(counters_b.items())),
        ],
    )
    lines = busy.stderr.decode().splitlines()
    assert busy.returncode != 0 and busy.stdout == b""
    assert len(lines) == 1 and "held by another process" in lines[0], lines
    assert result["error"] is None, result["error"]
    assert result["received"] == SIZE
    assert result["mismatch_at"] is None
    assert life_b.epoch > a.current.epoch
    assert life_b.restored == 1
    # A's write after the thaw was refused by the store, and A let the flow go quietly.
    assert counters_a.get("flows_fenced", 0) == 1, (counters_a, stderr_a[-2000:])
    assert f"epoch {a.current.epoch} < owner epoch {life_b.epoch}" in stderr_a
    assert counters_a.get("rst_sent", 0) == 0, counters_a
    assert counters_b.get("rst_sent", 0) == 0, counters_b
