"""``stcp run echo`` as a real process, with the Linux kernel as its client."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from kernel_peer import run_kernel_peer
from netns_fixtures import TunNet
from restart_helpers import RedisServer, StcpServer

from stcp_framework.cli.net import net_down

MB = 1 << 20
PORT = 7
START_TIMEOUT = 10.0  # seconds until the server says it is serving
TRANSFER_TIMEOUT = 60.0  # 100 MB through echo takes a few seconds
STOP_TIMEOUT = 10.0

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(120)]


def stcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stcp_framework.cli.main", *args]


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line from a pipe (bounded: 64 KB without a newline is a failure)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, f"EOF before a full line: {bytes(line)!r}"
        line += chunk
        assert len(line) < 65536
    return bytes(line)


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
async def test_stcp_run_echo_100mb_byte_exact(
    tun_net: TunNet, pcap_path: Path, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr"
    command = stcp_command(
        "run", "echo", "--dev", tun_net.dev, "--listen", f"{tun_net.stack_addr}:{PORT}",
        "--store", "memory", "--pcap", str(pcap_path),
    )  # fmt: skip
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdout is not None
            with trio.fail_after(START_TIMEOUT):
                banner = await read_line(process.stdout)
            assert banner.startswith(b"stcp: serving echo on "), banner
            with trio.fail_after(TRANSFER_TIMEOUT):
                result = await run_kernel_peer("echo", tun_net.stack_addr, PORT, 100 * MB)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_TIMEOUT):
                returncode = await process.wait()
        except BaseException as exc:
            exc.add_note(f"stcp run stderr: {stderr_path.read_text()!r}")
            raise
        finally:
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(STOP_TIMEOUT):
                    await process.wait()
    errors = stderr_path.read_text()
    assert result["error"] is None and result["sender_errors"] == [], (result, errors)
    assert result["received"] == 100 * MB
    assert result["mismatch_at"] is None
    assert returncode == 0, errors
    assert errors.startswith("stcp: stopped; "), errors
    assert "passive_opens=1" in errors


async def test_stcp_run_on_missing_device_says_one_line() -> None:
    with trio.fail_after(START_TIMEOUT):
        done = await trio.run_process(
            stcp_command("run", "echo", "--dev", "stcpnope0", "--listen", "198.18.0.2:7"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = done.stderr.decode().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("stcp: error: ") and "stcpnope0" in lines[0]
    assert done.stdout == b""


async def test_stcp_run_without_privilege_says_one_line(tun_net: TunNet) -> None:
    """As an unprivileged user, attaching to the device fails first, in one line,
    before any store is touched."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    with trio.fail_after(START_TIMEOUT):
        done = await trio.run_process(
            [*nobody, *stcp_command("run", "echo", "--dev", tun_net.dev, "--listen",
                                    f"{tun_net.stack_addr}:7")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    lines = done.stderr.decode().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("stcp: error: ") and "needs root or CAP_NET_ADMIN" in lines[0]
    assert done.stdout == b""


async def test_stcp_run_warns_about_a_redis_without_aof(tun_net: TunNet, tmp_path: Path) -> None:
    """After its banner, one warning per store setting that weakens the guarantees
    (``RedisStore.settings_warnings``); the server serves all the same."""
    redis_server = RedisServer(tmp_path / "redis", extra_args=["--appendonly", "no"])
    redis_server.start()
    server = StcpServer(
        service="echo",
        dev=tun_net.dev,
        listen=f"{tun_net.stack_addr}:{PORT}",
        store_url=redis_server.url,
        workdir=tmp_path / "stcp",
    )
    try:
        async with server.session():
            with trio.fail_after(START_TIMEOUT):
                for _ in range(200):  # the warning follows the banner (its own task)
                    if "appendonly" in server.current.stderr_path.read_text():
                        break
                    await trio.sleep(0.05)
                result = await run_kernel_peer("echo", tun_net.stack_addr, PORT, MB)
            await server.stop()
    finally:
        redis_server.stop()
    assert result["error"] is None and result["received"] == MB
    warnings = [
        line for line in server.current.stderr_path.read_text().splitlines() if "WARNING" in line
    ]
    assert len(warnings) == 1, warnings
    assert "store: Redis runs without AOF (appendonly no)" in warnings[0]


async def test_a_device_removed_under_the_server_ends_it_with_one_line(
    tun_net: TunNet, tmp_path: Path
) -> None:
    """`stcp net down` while a server holds the device: the server says so in one line
    (it was a page of exception groups), status 2 -- a supervisor that restarts it
    would only meet a missing device."""
    command = stcp_command(
        "run", "echo", "--dev", tun_net.dev, "--listen", tun_net.stack_addr,  # (port 7)
        "--store", "memory",
    )  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(START_TIMEOUT):
            banner = await read_line(process.stdout)
        assert banner.startswith(f"stcp: serving echo on {tun_net.stack_addr}:7 ".encode())
        await trio.to_thread.run_sync(net_down, tun_net.dev)
        with trio.fail_after(STOP_TIMEOUT):
            returncode = await process.wait()
            errors = b""
            while chunk := await process.stderr.receive_some():
                errors += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = errors.decode().splitlines()
    assert returncode == 2, errors
    assert len(lines) == 1 and lines[0].startswith("stcp: error: TUN device "), lines
    assert "was removed while serving" in lines[0]


async def test_stcp_run_refuses_the_kernel_side_s_own_address(tun_net: TunNet) -> None:
    """Packets to the kernel's own address stay in the kernel: serving it would never
    see one. (``device_interfaces`` reads the device's addresses for the check.)"""
    from stcp_framework.cli.endpoint import device_interfaces

    kernel_side = device_interfaces(tun_net.dev)
    assert ipaddress.ip_interface(f"{tun_net.kernel_addr}/{tun_net.prefix_len}") in kernel_side
    assert ipaddress.ip_interface(f"{tun_net.kernel_addr6}/{tun_net.prefix_len6}") in kernel_side
    with trio.fail_after(START_TIMEOUT):
        done = await trio.run_process(
            stcp_command("run", "echo", "--dev", tun_net.dev, "--listen", tun_net.kernel_addr,
                         "--store", "memory"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "kernel side's own address" in lines[0] and tun_net.stack_addr in lines[0]
