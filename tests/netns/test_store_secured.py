"""A store that wants credentials and speaks TLS: ``stcp run`` on a Redis with
``requirepass`` and an ACL user, reached by ``rediss://`` with a CA of the test's own
making (``trustme``), killed with SIGKILL and restarted; and the one-line refusals
(status 2, no retry loop) when the URL's credentials or CA are wrong.

The TLS port is on 127.0.0.1 of the suite's private namespace. A ``rediss://`` store
commits through redis-py in a worker thread (``resp.py`` does not speak TLS), so this
is also that path's test against a real server.
"""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from netns_fixtures import TunNet
from restart_helpers import (
    MB,
    Peer,
    RedisServer,
    StcpServer,
    kill_offsets,
    stcp_command,
)

pytestmark = [pytest.mark.slow, pytest.mark.netns]

ECHO_PORT = 7
PASSWORD = "default-user-secret"  # requirepass: the default user's password
USER, USER_PASSWORD = "stcp-app", "app-user-secret"  # an ACL user
REFUSAL_TIMEOUT = 15.0  # seconds for `stcp run` to give up (it must not retry)


@dataclass
class SecuredRedis:
    server: RedisServer
    port: int  # TLS
    plain_port: int  # plain TCP (the trio-driven connection's way, resp.py)
    ca_path: Path

    def url(self, credentials: str = "", *, ca: bool = True) -> str:
        """``rediss://CREDENTIALS@127.0.0.1:PORT`` naming the test's CA (unless not
        ``ca``: then the system's CAs, which never signed the server's certificate)."""
        at = f"{credentials}@" if credentials else ""
        query = f"?ssl_ca_certs={self.ca_path}" if ca else ""
        return f"rediss://{at}127.0.0.1:{self.port}{query}"

    def plain_url(self, credentials: str) -> str:
        return f"redis://{credentials}@127.0.0.1:{self.plain_port}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def secured_redis(tmp_path: Path) -> Iterator[SecuredRedis]:
    tls = tmp_path / "tls"
    tls.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    port, plain_port = _free_port(), _free_port()
    server = RedisServer(
        tmp_path / "redis",
        extra_args=[
            "--bind", "127.0.0.1", "--tls-port", str(port), "--port", str(plain_port),
            "--tls-cert-file", str(tls / "cert.pem"), "--tls-key-file", str(tls / "key.pem"),
            "--tls-ca-cert-file", str(tls / "ca.pem"), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
            "--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all",
        ],
        password=PASSWORD,
    )  # fmt: skip
    server.start()
    yield SecuredRedis(server, port, plain_port, tls / "ca.pem")
    server.stop()


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.parametrize("transport", ["tls", "tcp"])
@pytest.mark.timeout(120)
async def test_echo_through_a_store_with_an_acl_user_survives_kill9(
    tun_net: TunNet, secured_redis: SecuredRedis, tmp_path: Path, transport: str
) -> None:
    """``rediss://`` (redis-py in a worker thread) and ``redis://`` over TCP (the
    trio-driven connection, resp.py), each with an ACL user's credentials."""
    rng = random.Random(6379)
    size = 40 * MB
    credentials = f"{USER}:{USER_PASSWORD}"
    url = (
        secured_redis.url(credentials)
        if transport == "tls"
        else secured_redis.plain_url(credentials)
    )
    server = StcpServer(
        service="echo",
        dev=tun_net.dev,
        listen=f"{tun_net.stack_addr}:{ECHO_PORT}",
        store_url=url,
        workdir=tmp_path / "stcp",
    )
    async with server.session():
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(nursery, "echo", tun_net.stack_addr, ECHO_PORT, size)
            with trio.fail_after(90):
                offsets = kill_offsets(rng, size, 2, high=0.6)
                await peer.wait_offset(offsets[0])
                await server.restart()
                await peer.wait_offset(offsets[1])
                server.pause()  # (SIGSTOP: the transfer waits while `stcp flows` reads)
                try:
                    listing = await trio.run_process(
                        stcp_command("flows", "--store", url, "--instance", server.instance),
                        capture_stdout=True,
                        capture_stderr=True,
                    )
                finally:
                    server.resume()
                await server.restart()
                result = await peer.result()
        await server.stop()
    assert result["error"] is None, (result["error"], server.stderr_tail())
    assert result["received"] == size
    assert result["mismatch_at"] is None
    assert [life.restored for life in server.incarnations] == [0, 1, 1], (
        offsets,
        result,
        server.stderr_tail(),
    )
    table = listing.stdout.decode()
    assert "ESTABLISHED" in table and f"{tun_net.stack_addr}:{ECHO_PORT}" in table, table
    text = "".join(life.stderr_path.read_text() for life in server.incarnations)
    assert USER_PASSWORD not in text + table


REFUSALS = [
    pytest.param(":wrong-secret", True, "refused the credentials", id="wrong-password"),
    pytest.param(f"{USER}:wrong-secret", True, "refused the credentials", id="wrong-user-password"),
    pytest.param("", True, "requires a password", id="no-password"),
    pytest.param(f"{USER}:{USER_PASSWORD}", False, "ssl_ca_certs=", id="unknown-ca"),
]


@pytest.mark.parametrize(("credentials", "ca", "says"), REFUSALS)
@pytest.mark.timeout(60)
async def test_a_refusing_store_stops_stcp_run_and_flows_with_one_line(
    tun_net: TunNet, secured_redis: SecuredRedis, credentials: str, ca: bool, says: str
) -> None:
    """Credentials Redis refuses, or a certificate that does not verify, are settings:
    `stcp run` stops at once with one line and status 2 (a `--workers` supervisor then
    does not restart it) instead of waiting the store out as an outage (G7), and so
    does `stcp flows`. The secret in the URL is never printed."""
    url = secured_redis.url(credentials, ca=ca)
    run = stcp_command(
        "run", "echo", "--dev", tun_net.dev, "--listen", f"{tun_net.stack_addr}:{ECHO_PORT}",
        "--store", url,
    )  # fmt: skip
    flows = stcp_command("flows", "--store", url)
    for command in (run, flows):
        with trio.fail_after(REFUSAL_TIMEOUT):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
        err = done.stderr.decode()
        lines = [line for line in err.splitlines() if line.strip()]
        assert done.returncode == 2, (command[3], done.returncode, err)
        assert len(lines) == 1 and lines[0].startswith("stcp: error: "), err
        assert says in lines[0], lines[0]
        assert "wrong-secret" not in err and USER_PASSWORD not in err, err
        assert done.stdout == b"", done.stdout


def test_the_fixture_server_refuses_plain_text_clients(secured_redis: SecuredRedis) -> None:
    """The TLS port is TLS only (so the tests above did go through TLS)."""
    plain = stcp_command("flows", "--store", f"redis://:{PASSWORD}@127.0.0.1:{secured_redis.port}")
    done = subprocess.run(plain, capture_output=True, timeout=REFUSAL_TIMEOUT, check=False)
    assert done.returncode == 2, done
    assert b"not reachable" in done.stderr, done.stderr
