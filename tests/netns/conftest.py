"""Fixtures for tests on real TUN devices in a private network namespace.

The suite runs inside ``unshare -n`` (the test script does that, as root). Before the
first test of this folder a session check confirms the namespace looks private (the same
predicate as ``stcp net up``), that we have CAP_NET_ADMIN and ``/dev/net/tun``: if not,
the tests fail loudly when ``CI=true`` and are skipped with a one-line reason otherwise.

Fixtures:
    ``make_tun_net(mtu=1500)``: factory of ``TunNet`` devices, each removed after the test.
    ``tun_net``: one ``TunNet``; its MTU can be set by indirect parametrization
        (``@pytest.mark.parametrize("tun_net", [65000], indirect=True)``).
    ``pcap_path``: ``pcaps/<test>.pcap`` for ``PcapDevice``; deleted if the test passed,
        kept (and its path printed) if it failed.
    (no fixture) the captures ``stcp run`` processes wrote under a failing test's
        ``tmp_path`` (``restart_helpers.StcpServer`` gives each one ``--pcap``) are
        copied to ``pcaps/<test>/`` and named in its report.
    ``redis_server``: a private ``redis-server`` for one test (``restart_helpers.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from netns_fixtures import (
    TunNet,
    bring_loopback_up,
    create_tun_net,
    netns_problem,
    pcap_path_for,
    remove_tun_net,
)
from restart_helpers import RedisServer

_HERE = Path(__file__).parent
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_PCAP = pytest.StashKey[Path]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.netns)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    path = item.stash.get(_PCAP, None)
    if path is not None and report.when == "call" and report.failed:
        report.sections.append(("stcp pcap", f"packet capture kept: {path}"))
    if report.when == "call" and report.failed:
        kept = _keep_server_captures(item)
        if kept is not None:
            report.sections.append(("stcp pcap", f"server packet captures kept: {kept}"))
    return report


def _keep_server_captures(item: pytest.Item) -> Path | None:
    """Copy the pcaps under the failed test's ``tmp_path`` to ``pcaps/<test>/``."""
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp_path, Path):
        return None
    captures = sorted(tmp_path.rglob("*.pcap*"))
    if not captures:
        return None
    folder = pcap_path_for(item.config.rootpath, item.nodeid).with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    for capture in captures:
        relative = capture.relative_to(tmp_path)
        shutil.copyfile(capture, folder / "-".join(relative.parts))
    return folder


@pytest.fixture(scope="session", autouse=True)
def netns_ready() -> None:
    """Fail (CI) or skip (elsewhere) unless we are root in a private namespace."""
    problem = netns_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"netns tests cannot run: {problem}", pytrace=False)
        pytest.skip(f"netns tests skipped: {problem}")
    bring_loopback_up()


@pytest.fixture
def make_tun_net() -> Iterator[Callable[..., TunNet]]:
    """Factory ``make(mtu=1500) -> TunNet``; every device is removed after the test."""
    created: list[TunNet] = []

    def make(mtu: int = 1500) -> TunNet:
        tun = create_tun_net(mtu)
        created.append(tun)
        return tun

    yield make
    for tun in created:
        remove_tun_net(tun)


@pytest.fixture
def tun_net(request: pytest.FixtureRequest, make_tun_net: Callable[..., TunNet]) -> TunNet:
    """One TUN device (MTU 1500, or the indirect parameter)."""
    mtu = getattr(request, "param", 1500)
    return make_tun_net(mtu=mtu)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private ``redis-server`` (AOF on, Unix socket) in the test's directory."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pcap_path(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where to write this test's capture; kept only if the test fails."""
    path = pcap_path_for(request.config.rootpath, request.node.nodeid)
    path.parent.mkdir(exist_ok=True)
    request.node.stash[_PCAP] = path
    yield path
    reports = request.node.stash.get(_REPORTS, {})
    if any(r.failed for r in reports.values()):
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and path.exists():
            reporter.write_line(f"stcp: packet capture kept: {path}")
    else:
        path.unlink(missing_ok=True)
