"""``stcp flows`` end to end: a real redis-server, flows committed through RedisStore by
connections driven in memory, and the command's table, summary and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent.parent / "store"))  # the store test helpers

from flow_factory import DrivenFlow, commit_all, drive_established
from store_helpers import RedisServer, system_redis_binary

from stcp_framework.cli.main import main
from stcp_framework.store.base import FlowDelta
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.delta import AppCommit, StateDelta

HEADER = [
    "State",
    "Local",
    "Peer",
    "Epoch",
    "Read",
    "Commit",
    "Acked",
    "Sent",
    "Rx-Q",
    "Tx-Q",
    "Tx-Src",
    "Acks",
    "App",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(system_redis_binary(), tmp_path_factory.mktemp("flows-redis"))
    server.start()
    yield server
    server.stop()


def _flow(
    remote_port: int,
    *,
    local: str = "198.18.0.2",
    remote: str = "198.19.0.1",
    port: int = 7,
    epoch: int = 4,
    received: int = 0,
    read: int = 0,
    sent: int = 0,
    acked: int = 0,
) -> DrivenFlow:
    return drive_established(
        local,
        port,
        remote,
        remote_port,
        epoch=epoch,
        iss=1000 * remote_port,
        received=b"r" * received,
        read_len=read,
        sent=b"s" * sent,
        acked_len=acked,
    )


async def _commit(url: str, flows: dict[str, list[DrivenFlow]]) -> None:
    for instance, driven in flows.items():
        store = RedisStore.from_url(url, service=instance)
        await commit_all(store, driven)
        await store.aclose()
    store = RedisStore.from_url(url, service="default")
    first = flows["default"][0]
    version = first.deltas[-1].delta.version + 1
    await store.commit(
        [FlowDelta(first.flow_id, 4, StateDelta(version, (AppCommit(40, b"x" * 12),)))]
    )
    await store.aclose()


@pytest.fixture(scope="module")
def committed(server: RedisServer) -> dict[str, list[DrivenFlow]]:
    """Instance ``default``: four flows, committed out of order (the first one with 12
    bytes of app state); ``web``: one."""
    flows = {
        "default": [
            _flow(10000, received=100, read=40, sent=3000, acked=1000),
            _flow(9, received=5, read=5),
            _flow(443, local="2001:db8::2", remote="2001:db8::1", port=8443),
            _flow(10000, remote="198.19.0.0", sent=10, acked=10),
        ],
        "web": [_flow(20000, port=80, epoch=9, received=7)],
    }
    trio.run(_commit, server.url, flows)
    return flows


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["flows", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_table_lists_every_flow_sorted_with_offsets_and_sizes(
    server: RedisServer,
    committed: dict[str, list[DrivenFlow]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _run(capsys, "--store", server.url)
    assert lines[0].split() == HEADER
    rows = [line.split() for line in lines[1:-1]]
    assert [row[1:3] for row in rows] == [  # by local, then peer address:port; IPv6 last
        ["198.18.0.2:7", "198.19.0.0:10000"],
        ["198.18.0.2:7", "198.19.0.1:9"],
        ["198.18.0.2:7", "198.19.0.1:10000"],
        ["[2001:db8::2]:8443", "[2001:db8::1]:443"],
    ]
    busy = rows[2]
    # state, epoch, read, commit, acked, sent, rx-q (received - read), tx-q (sent - acked),
    # tx-src (nothing sent from a source), acks (strict: ACKs cover stored bytes), app
    assert busy[0] == "ESTABLISHED"
    assert busy[3:] == ["4", "40", "40", "1000", "3000", "60", "2000", "0", "store", "12"]
    assert rows[1][3:] == ["4", "5", "5", "0", "0", "0", "0", "0", "store", "-"]
    assert lines[-1] == (
        "4 flows (instance default; 4 ESTABLISHED); buffered: 60 B received, "
        "2000 B to send, 12 B app state"
    )
    assert max(len(line) for line in lines) <= 120


def test_all_lists_every_instance_with_its_name(
    server: RedisServer,
    committed: dict[str, list[DrivenFlow]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _run(capsys, "--store", server.url, "--all")
    assert lines[0].split() == ["Instance", *HEADER]
    rows = [line.split() for line in lines[1:-1]]
    assert [row[0] for row in rows] == ["default"] * 4 + ["web"]
    assert rows[-1][1:5] == ["ESTABLISHED", "198.18.0.2:80", "198.19.0.1:20000", "9"]
    assert rows[-1][-5:] == ["7", "0", "0", "store", "-"]
    assert lines[-1].startswith("5 flows (2 instances; 5 ESTABLISHED); buffered: 67 B received")


def test_all_on_a_store_without_flows_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(It raised IndexError.)"""
    empty = RedisServer(system_redis_binary(), tmp_path / "redis")
    empty.start()
    try:
        lines = _run(capsys, "--store", empty.url, "--all")
    finally:
        empty.stop()
    assert lines[-1] == (
        "0 flows (no instance); buffered: 0 B received, 0 B to send, 0 B app state"
    )


def test_json_has_every_field_of_each_flow(
    server: RedisServer,
    committed: dict[str, list[DrivenFlow]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = json.loads(
        "\n".join(_run(capsys, "--store", server.url, "--instance", "web", "--json"))
    )
    driven = committed["web"][0]
    tcb = driven.conn.tcb
    assert report["instances"] == ["web"]
    assert report["flows"] == [
        {
            "instance": "web",
            "flow_id": driven.flow_id,
            "local": "198.18.0.2:80",
            "peer": "198.19.0.1:20000",
            "state": "ESTABLISHED",
            "epoch": 9,
            "version": driven.deltas[-1].delta.version,
            "recv_offset": tcb.rcv_nxt_offset,
            "read_offset": 0,
            "commit_offset": tcb.commit_offset,
            "app_commit_offset": 0,
            "acked_offset": 0,
            "sent_offset": 0,
            "rx_buffered": 7,
            "tx_buffered": 0,
            "tx_from_sources": 0,
            "acks": "store",
            "app_state_size": None,
        }
    ]
    assert report["totals"] == {"flows": 1, "rx_buffered": 7, "tx_buffered": 0, "app_state_size": 0}


def test_an_instance_without_flows_prints_only_the_summary(
    server: RedisServer,
    committed: dict[str, list[DrivenFlow]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(capsys, "--store", server.url, "--instance", "nobody") == [
        "0 flows (instance nobody); buffered: 0 B received, 0 B to send, 0 B app state"
    ]


def test_a_store_that_is_not_running_is_one_line_and_is_not_started(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stcp_framework.cli.main", "flows", "--store-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"stcp: error: store at unix://{tmp_path}/redis.sock is not running: start it with "
        f"`stcp store up --dir {tmp_path}`"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing created


def test_an_unreachable_url_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["flows", "--store", "redis://:hunter2@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "store at redis://:***@127.0.0.1:1/0 is not reachable" in err[0]
    assert "hunter2" not in err[0]


def test_a_row_shows_bytes_sent_from_sources_and_ack_on_commit() -> None:
    from stcp_framework.cli.flows import make_row
    from stcp_framework.store.base import FlowInfo

    tcb: dict[str, object] = {
        "state": "ESTABLISHED",
        "snd_una": 100,
        "snd_nxt": 5100,
        "snd_una_offset": 1000,
        "ack_on_commit": True,
        "tx_refs": '[[0,3000,0,"chargen"],[4000,9000,0,"file:1:2:3:/x"]]',
    }
    info = FlowInfo("198.18.0.2:19-198.19.0.1:5/00000001", 3, 7, tcb, 0, 0, 0, 12, None, 0)
    row = make_row("default", info.flow_id, info)
    assert (row.acked_offset, row.sent_offset) == (1000, 6000)
    assert row.tx_from_sources == 2000 + 9000  # what is not acknowledged of each extent
    assert row.acks == "commit" and row.tx_buffered == 12


def test_an_instance_lists_the_flows_of_its_workers_too(
    server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stcp run --workers 2 --instance api`` keeps flows under api.w0 and api.w1."""

    async def commit() -> None:
        for instance, port in (("api.w1", 30001), ("api.w0", 30000), ("api.wx", 30002)):
            store = RedisStore.from_url(server.url, service=instance)
            await commit_all(store, [_flow(port, port=81, epoch=2)])
            await store.aclose()

    trio.run(commit)
    lines = _run(capsys, "--store", server.url, "--instance", "api")
    assert lines[0].split() == ["Instance", *HEADER]
    rows = [line.split() for line in lines[1:-1]]
    assert [(row[0], row[3]) for row in rows] == [
        ("api.w0", "198.19.0.1:30000"),
        ("api.w1", "198.19.0.1:30001"),
    ]
    assert lines[-1].startswith("2 flows (instance api and its 2 workers; 2 ESTABLISHED)")
