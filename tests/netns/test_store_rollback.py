"""Redis goes back to an older state under a running server: killed and started again
from an older copy of its AOF, as after a power loss with ``appendfsync everysec`` or a
failover to a replica that missed the last writes.

A connection whose stored state is older than what the server has committed cannot be
continued safely (its stored bytes and geometry are gone too), and applying the next
delta on top of the old state would mix fields of two versions into one TCB. The
server must notice (the delta does not follow the stored version: ``FlowLost``), reset
just that connection, and go on serving: the client sees a reset, not a hang and not a
wrong byte, and a new connection works.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, Peer, RedisServer, server_for

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(90)]

ECHO_PORT = 7
CHARGEN_PORT = 19
SIZE = 400 * MB
COPY_AT = 20 * MB  # client offset at which the AOF is copied (the "older state")
ROLLBACK_AFTER = 40 * MB  # bytes echoed after the copy, before Redis dies and comes back


@pytest.fixture
def rollback_redis(tmp_path: Path) -> RedisServer:
    # no AOF rewrite during the test: the copy is then a prefix of one append-only file
    server = RedisServer(tmp_path / "redis", extra_args=["--auto-aof-rewrite-percentage", "0"])
    server.start()
    return server


def echo_once(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(b"still serving")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(100):
            answer += chunk
        return answer


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
async def test_a_connection_redis_rolled_back_is_reset_and_the_server_serves_on(
    tun_net: TunNet, rollback_redis: RedisServer, tmp_path: Path
) -> None:
    store = rollback_redis
    copy = tmp_path / "older-redis"
    server = server_for("echo", ECHO_PORT, tun_net, store, tmp_path)
    try:
        async with server.session():
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(
                    nursery, "echo", tun_net.stack_addr, ECHO_PORT, SIZE, progress=MB
                )
                with trio.fail_after(60):
                    await peer.wait_offset(COPY_AT)
                    await trio.to_thread.run_sync(
                        lambda: shutil.copytree(store.directory, copy, ignore=_sockets)
                    )
                    # (the copy takes a while on a busy machine: count from its end)
                    await peer.wait_offset(peer.offset + ROLLBACK_AFTER)
                    assert store.proc is not None
                    store.proc.kill()  # SIGKILL: no AOF flush (the copy is older anyway)
                    store.proc.wait()
                    store.proc = None
                    await trio.to_thread.run_sync(_replace, store.directory, copy)
                    await trio.to_thread.run_sync(store.start)
                    result = await peer.result()
                    answer = await trio.to_thread.run_sync(echo_once, tun_net.stack_addr, ECHO_PORT)
            counters = await server.stop()
        flows_left = store.flow_ids(server.instance)
    finally:
        store.stop()
    # (whichever of the client's reading and sending threads met the RST first gets
    # ECONNRESET; the other then sees the connection ended)
    errors = [result["error"] or "", *result["sender_errors"]]
    assert any("reset" in error.lower() for error in errors), (result, server.stderr_tail())
    assert result["mismatch_at"] is None, result
    assert COPY_AT + ROLLBACK_AFTER <= result["received"] < SIZE, result
    assert answer == b"still serving"
    assert counters.get("flows_lost") == 1, counters
    # what was left of it is forgotten: no later start restores it (the second, short
    # connection may still be on its way out when the server stopped)
    host, port = result["local"]
    assert not [flow for flow in flows_left if f"-{host}:{port}/" in flow], flows_left
    log = server.stderr_tail()
    assert "does not follow the stored" in log, log


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.parametrize(
    ("service", "port", "proof"),
    [("echo", ECHO_PORT, "acked_bytes_lost"), ("chargen", CHARGEN_PORT, "sent_bytes_lost")],
)
async def test_a_server_restarted_on_a_rolled_back_redis_resets_the_connection(
    tun_net: TunNet,
    rollback_redis: RedisServer,
    tmp_path: Path,
    service: str,
    port: int,
    proof: str,
) -> None:
    """The same rollback while the server is down too (a power loss takes both): the
    restore finds the connection's older state. The client already has bytes past the
    stored SND.NXT, and (echo) the server acknowledged bytes past the stored RCV.NXT.
    Continued, the connection would hang -- the client's ACKs are of data never sent,
    its data starts above the gap, and its socket timed out after 20 s. The restored
    connection resets itself once the client proves the loss: its resend above the gap
    (echo, ``acked_bytes_lost``), or its ACK past the record coming again (a download
    only ACKs, ``sent_bytes_lost``)."""
    store = rollback_redis
    copy = tmp_path / "older-redis"
    server = server_for(service, port, tun_net, store, tmp_path)
    mode = "echo" if service == "echo" else "chargen"
    try:
        async with server.session():
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(nursery, mode, tun_net.stack_addr, port, SIZE, progress=MB)
                with trio.fail_after(60):
                    await peer.wait_offset(COPY_AT)
                    await trio.to_thread.run_sync(
                        lambda: shutil.copytree(store.directory, copy, ignore=_sockets)
                    )
                    await peer.wait_offset(peer.offset + ROLLBACK_AFTER)
                    await server.kill()  # both die: first the server, then Redis
                    assert store.proc is not None
                    store.proc.kill()
                    store.proc.wait()
                    store.proc = None
                    await trio.to_thread.run_sync(_replace, store.directory, copy)
                    await trio.to_thread.run_sync(store.start)
                    life = await server.start()
                    assert life.restored == 1
                    result = await peer.result()
            counters = await server.stop()
        flows_left = store.flow_ids(server.instance)
    finally:
        store.stop()
    errors = [result["error"] or "", *result.get("sender_errors", [])]
    assert any("reset" in error.lower() for error in errors), (result, server.stderr_tail())
    assert result["mismatch_at"] is None, result
    assert counters.get(f"tcp.{proof}") == 1, counters
    host, client_port = result["local"]
    assert not [flow for flow in flows_left if f"-{host}:{client_port}/" in flow], flows_left
    log = server.stderr_tail(4000)
    assert "Traceback" not in log, log  # the handler's end is one line, not a failure


def _sockets(_directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name.endswith(".sock")]


def _replace(directory: Path, older: Path) -> None:
    """``directory``'s data files become ``older``'s (the socket is recreated)."""
    for entry in directory.iterdir():
        if entry.name.endswith(".sock"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in older.iterdir():
        target = directory / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copy2(entry, target)
