"""stcp against kernel TCP, side by side in one run: ``.venv/bin/python bench/run.py [--quick]``.

Theory of operation:
    Run as root. If the current network namespace looks like the host's
    (``stcp_framework.cli.netns.current_namespace_problems``), the script re-executes
    itself under ``unshare --net``; everything below happens in that private namespace
    ("A"), where the client processes run.

    Servers, one process each (``python -m bench.server``), all running the same
    echo/discard/chargen functions of ``stcp_framework.services``:

    * ``kernel-veth``: trio on kernel sockets in a second private namespace ("B",
      ``unshare --net`` of the server process itself), reached over a veth pair: the
      fair comparison, since the traffic crosses a virtual link like TUN traffic does.
    * ``kernel-lo``: the same server in namespace A, reached over loopback: the ceiling.
    * ``stcp-65000`` / ``stcp-1500``: stcp with ``MemoryStore`` on a TUN device of that
      MTU; plus ``-offload``/``-nooffload`` variants when ``TunDevice.open`` takes an
      ``offload=`` keyword.

    Phases, each run for every server before the next phase starts (so slow drifts of a
    shared machine hit all servers alike), each with a deadline (``bench/client.py``):
    scaling (first, while the servers are fresh, since RSS never shrinks), connections per
    second (sequential and with 8 concurrent clients), then bulk upload, download, echo.

    Output: one table per measurement with absolute figures and the ratio to
    ``kernel-veth``, and the whole result as JSON in ``bench/results/<timestamp>.json``.
    Devices, the veth pair, the sysctl changes and every child process (by PID) are
    cleaned up on success, error, Ctrl-C and SIGTERM; children also get
    ``PR_SET_PDEATHSIG`` so that they die with the orchestrator even after a SIGKILL.

Benchmarks are not tests: nothing here asserts a time; ratios within one run are what
to read (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import inspect
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stcp_framework.cli.net import net_down, net_up
from stcp_framework.cli.netns import current_namespace_problems, run_ip
from stcp_framework.cli.workers import die_with_parent
from stcp_framework.errors import StcpConfigError
from stcp_framework.link.tun import TunDevice, device_exists
from stcp_framework.services import DEFAULT_PORTS

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = sys.executable
REEXEC_MARK = "STCP_BENCH_NETNS"  # set in the environment of the re-executed run

BASELINE = "kernel-veth"
VETH_A, VETH_B = "bnchveth0", "bnchveth1"
VETH_ADDR_A, VETH_ADDR_B = "198.18.1.1", "198.18.1.2"
PORT_RANGE_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_RANGE = "10000 65000"  # room for the conns phases' TIME-WAIT sockets (per netns)
TW_REUSE_PATH = "/proc/sys/net/ipv4/tcp_tw_reuse"
# Let the clients reuse their TIME-WAIT ports (timestamps make it safe, RFC 6191 / Linux
# tcp_twsk_unique): with --repeat, tens of thousands of connections to one server
# within 60 s fill the port range, and connect() then slows for kernel and stcp rows
# alike (a third c8 run fell to ~330/s for both without this).
TW_REUSE = "1"

READY_TIMEOUT = 30.0  # seconds for a server to print READY
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
PROBE_TIMEOUT = 10.0  # seconds for a server to answer its first echo
CLIENT_GRACE = 30.0  # seconds a client may overrun its own deadline before it is killed

TARGET_DURABLE_RATIO = 0.80  # issue 3: stcp + Redis vs stcp + MemoryStore
TARGET_BULK_RATIO = 0.5
TARGET_CONNS_PER_S = 2000.0
TARGET_SCALE_RATIO = 10.0

BULK_MODES = ("upload", "download", "echo")
PHASES = ("scale", "conns", *BULK_MODES)


class BenchError(Exception):
    """A setup step failed; the message says which."""


@dataclass
class Server:
    """One server under test and its process."""

    key: str
    label: str
    kind: str  # "kernel" or "stcp"
    host: str
    dev: str | None = None
    mtu: int | None = None
    offload: bool | None = None
    store: str = "memory"  # "memory", or "redis" (the run's private redis-server)
    durability: str = "strict"
    netns: bool = False  # runs in its own namespace behind the veth pair
    workers: int = 1  # stcp: processes on the device's queues (``stcp run --workers``)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ------------------------------------------------------------------ process helpers


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait (bounded), SIGKILL: only this PID, which we started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_ready(server: Server) -> None:
    """Wait (bounded) for the server's ``READY`` line."""
    proc = server.proc
    assert proc is not None and proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{server.key}: no READY within {READY_TIMEOUT:.0f} s")
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            line = proc.stdout.readline()
            if line.startswith("READY"):
                return
            if not line:
                raise BenchError(f"{server.key}: exited with {proc.wait()}; {_log_tail(server)}")


def _log_tail(server: Server, lines: int = 5) -> str:
    if server.log_path is None or not server.log_path.exists():
        return ""
    text = server.log_path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


def _probe(server: Server) -> None:
    """One byte through the echo service: the path works end to end (bounded)."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((server.host, DEFAULT_PORTS["echo"]), timeout=2) as s:
                s.sendall(b"!")
                if s.recv(1) == b"!":
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise BenchError(f"{server.key}: echo probe failed: {last!r}; {_log_tail(server)}")


# ------------------------------------------------------------------ setup


def tun_offload_supported() -> bool:
    """Whether ``TunDevice.open`` takes ``offload=`` (then offload on/off rows are added)."""
    return "offload" in inspect.signature(TunDevice.open).parameters


def plan_servers(selected: set[str] | None) -> list[Server]:
    """The servers of this run (all, or the ``--servers`` selection)."""
    servers = [
        Server(BASELINE, "kernel, veth (MTU 1500)", "kernel", VETH_ADDR_B, netns=True),
        Server("kernel-lo", "kernel, loopback", "kernel", "127.0.0.1"),
    ]
    variants: list[tuple[str, bool | None]] = [("", None)]
    if tun_offload_supported():
        variants = [("-offload", True), ("-nooffload", False)]
    subnet = 2
    for mtu in (65000, 1500):
        for suffix, offload in variants:
            label = f"stcp, TUN MTU {mtu}" + ("" if offload is None else f", offload {offload}")
            servers.append(
                Server(
                    f"stcp-{mtu}{suffix}",
                    label,
                    "stcp",
                    f"198.18.{subnet}.2",
                    dev=f"bnchtun{subnet}",
                    mtu=mtu,
                    offload=offload,
                )
            )
            subnet += 1
    # The same stack on both cores: two worker processes, one queue each.
    offload_on = True if variants[0][1] is not None else None
    servers.append(
        Server(
            "stcp-65000-offload-w2",
            "stcp, TUN MTU 65000, 2 worker processes",
            "stcp",
            f"198.18.{subnet}.2",
            dev=f"bnchtun{subnet}",
            mtu=65000,
            offload=offload_on,
            workers=2,
        )
    )
    subnet += 1
    # Issue 3: the same stack with its state in Redis (strict: nothing is acknowledged
    # before it is durable; async: write-behind; ack-on-commit: only committed bytes
    # are acknowledged, received bytes are not stored), against stcp + MemoryStore.
    offload = True if variants[0][1] is not None else None
    for durability in ("strict", "async", "ack-on-commit"):
        servers.append(
            Server(
                f"stcp-65000-redis-{durability}",
                f"stcp, TUN MTU 65000, Redis {durability}",
                "stcp",
                f"198.18.{subnet}.2",
                dev=f"bnchtun{subnet}",
                mtu=65000,
                offload=offload,
                store="redis",
                durability=durability,
            )
        )
        subnet += 1
    if selected:
        unknown = selected - {s.key for s in servers}
        if unknown:
            raise BenchError(
                f"unknown server(s) {sorted(unknown)}: choose from {[s.key for s in servers]}"
            )
        servers = [s for s in servers if s.key in selected or s.key == BASELINE]
    return servers


def start_server(server: Server, logdir: Path, cleanups: list[Callable[[], None]]) -> None:
    """Create the server's link, start its process, wait until it answers an echo."""
    cmd = [PYTHON, "-m", "bench.server", server.kind]
    if server.kind == "stcp":
        assert server.dev is not None and server.mtu is not None
        kernel_addr = server.host.rsplit(".", 1)[0] + ".1/24"
        net_up(server.dev, kernel_addr, mtu=server.mtu)
        dev = server.dev
        cleanups.append(lambda: net_down(dev) if device_exists(dev) else None)
        cmd += ["--dev", server.dev, "--addr", server.host]
        if server.offload is not None:
            cmd += ["--offload", "on" if server.offload else "off"]
        if server.store == "redis":
            cmd += ["--store", _redis_url(logdir, cleanups), "--durability", server.durability]
        if server.workers > 1:
            cmd += ["--workers", str(server.workers)]
    if server.netns:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise BenchError("`unshare` is missing: install util-linux")
        cmd = [unshare, "--net", "--", *cmd]  # unshare execs: the PID stays the server's
    server.log_path = logdir / f"{server.key}.log"
    with server.log_path.open("w") as log:
        server.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=die_with_parent,
        )
    proc = server.proc
    cleanups.append(lambda: stop_process(proc))
    _wait_ready(server)  # after READY the process has surely left our namespace
    if server.netns:
        _connect_veth(server.pid, cleanups)
    _probe(server)


_REDIS: dict[str, str] = {}


def _redis_url(logdir: Path, cleanups: list[Callable[[], None]]) -> str:
    """The run's private redis-server (the embedded store, AOF on), started once."""
    if "url" not in _REDIS:
        from stcp_framework.store import embedded

        directory = logdir / "redis"
        _REDIS["url"] = embedded.start(directory)

        def stop_redis() -> None:
            embedded.stop(directory)

        cleanups.append(stop_redis)
    return _REDIS["url"]


def _connect_veth(pid: int, cleanups: list[Callable[[], None]]) -> None:
    """A veth pair from namespace A into the namespace of process ``pid``, addressed."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise BenchError("`nsenter` is missing: install util-linux")
    run_ip("link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B, "netns", str(pid))

    def remove_veth() -> None:
        if device_exists(VETH_A):  # deleting one end removes both
            run_ip("link", "del", VETH_A, check=False)

    cleanups.append(remove_veth)
    run_ip("addr", "add", f"{VETH_ADDR_A}/24", "dev", VETH_A)
    run_ip("link", "set", VETH_A, "up")
    for args in (
        ("link", "set", "lo", "up"),
        ("addr", "add", f"{VETH_ADDR_B}/24", "dev", VETH_B),
        ("link", "set", VETH_B, "up"),
    ):
        proc = subprocess.run(
            [nsenter, "--target", str(pid), "--net", "--", "ip", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if proc.returncode:
            raise BenchError(f"`ip {' '.join(args)}` in the server namespace: {proc.stderr}")


def _set_port_range(cleanups: list[Callable[[], None]]) -> None:
    """Widen the ephemeral port range of namespace A and let its clients reuse their
    TIME-WAIT ports (per-namespace sysctls, restored at the end)."""
    for path, value in ((PORT_RANGE_PATH, PORT_RANGE), (TW_REUSE_PATH, TW_REUSE)):
        with open(path) as f:
            old = f.read().strip()

        def restore(path: str = path, old: str = old) -> None:
            with open(path, "w") as f:
                f.write(old + "\n")

        with open(path, "w") as f:
            f.write(value + "\n")
        cleanups.append(restore)


# ------------------------------------------------------------------ measuring


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds process ``pid`` and its children have run, all threads
    (``/proc/PID/task/*/schedstat``; children from ``/proc/PID/task/*/children``).

    Nanosecond resolution, unlike the 10 ms ticks of ``/proc/PID/stat``. Kernel TCP work
    done in softirq context is charged to whatever task was running, so for kernel
    servers this undercounts; it is still the steadier figure on a busy machine.
    """
    total_ns = 0
    try:
        for current in process_tree(pid):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/schedstat") as f:
                    total_ns += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total_ns / 1e9


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (``/proc/PID/task/*/children``): a
    server with ``--workers`` is a supervisor and its worker processes.

    Raises:
        OSError: a process of the tree went away meanwhile.
    """
    tree: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in os.listdir(f"/proc/{current}/task"):
            with open(f"/proc/{current}/task/{task}/children") as f:
                pending += [int(child) for child in f.read().split()]
    return tree


def run_client(mode: str, server: Server, deadline_s: float, *extra: str) -> dict[str, Any]:
    """Run one ``bench.client`` process against ``server``; its JSON, or ``{"error"}``."""
    port = DEFAULT_PORTS[{"upload": "discard", "download": "chargen"}.get(mode, "echo")]
    cmd = [
        PYTHON, "-m", "bench.client", mode, "--host", server.host, "--port", str(port),
        "--deadline", str(deadline_s), *extra,
    ]  # fmt: skip
    if not server.alive():
        return {"error": f"server is not running ({_log_tail(server)})"}
    cpu_before = server_cpu_s(server.pid)
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=deadline_s + CLIENT_GRACE,
            check=False,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"client overran its deadline by {CLIENT_GRACE:.0f} s and was killed"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"client exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    cpu_after = server_cpu_s(server.pid)
    if cpu_before is not None and cpu_after is not None:
        result["server_cpu_s"] = cpu_after - cpu_before
    if not server.alive():
        result["error"] = f"server died ({_log_tail(server)})"
    return result


def _cpu_per_unit(run: dict[str, Any], figure: str) -> float | None:
    """Server CPU µs per MB (bulk) or per connection (conns) of one client run."""
    cpu = run.get("server_cpu_s")
    units = (
        float(run.get("bytes", 0)) / 1e6 if figure == "mb_s" else float(run.get("connections", 0))
    )
    if cpu is None or not units:
        return None
    return float(cpu) / units * 1e6


def _median_cell(runs: list[dict[str, Any]], figure: str) -> dict[str, Any]:
    good = [r[figure] for r in runs if "error" not in r]
    cell: dict[str, Any] = {"runs": runs}
    costs = [c for r in runs if "error" not in r and (c := _cpu_per_unit(r, figure)) is not None]
    if costs:
        cell["server_cpu_us"] = statistics.median(costs)
    if good:
        cell[figure] = statistics.median(good)
    else:
        cell["error"] = runs[-1].get("error", "no result")
    cell["failed_runs"] = sum(1 for r in runs if "error" in r)
    cell["timed_out"] = any(r.get("timed_out") for r in runs if "error" not in r)
    return cell


@dataclass
class Plan:
    """Sizes and deadlines of one run."""

    size_mb: int
    conns: int
    levels: tuple[int, ...]
    rounds: int
    repeat: int
    client_cc: str | None = None  # the clients' congestion control; None: the system's

    @property
    def client_args(self) -> tuple[str, ...]:
        return ("--cc", self.client_cc) if self.client_cc else ()

    @property
    def bulk_deadline(self) -> float:
        return 15.0 + self.size_mb / 5.0  # floor of 5 MB/s

    @property
    def conns_deadline(self) -> float:
        return 15.0 + self.conns / 100.0  # floor of 100 connections/s

    @property
    def scale_deadline(self) -> float:
        return 30.0 + max(self.levels) / 20.0


def client_congestion_control(plan: Plan) -> str:
    """The congestion control the clients use: ``--cc``, else this namespace's default."""
    if plan.client_cc:
        return plan.client_cc
    try:
        default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "the system's default"
    return f"{default} (the system's default)"


def measure(
    servers: list[Server], plan: Plan, phases: tuple[str, ...], say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Every phase for every server; results[phase][server key]."""
    results: dict[str, dict[str, Any]] = {}
    live = [s for s in servers if s.error is None]
    if "scale" in phases:
        results["scale"] = {}
        levels = ",".join(str(n) for n in plan.levels)
        for server in live:
            say(f"scale    {server.key}")
            results["scale"][server.key] = run_client(
                "scale",
                server,
                plan.scale_deadline,
                "--levels",
                levels,
                "--rounds",
                str(plan.rounds),
                "--server-pid",
                str(server.pid),
                *plan.client_args,
            )
    if "conns" in phases:
        for concurrency, name in ((1, "conns_seq"), (8, "conns_c8")):
            conns_args = (
                "--count", str(plan.conns), "--concurrency", str(concurrency), *plan.client_args
            )  # fmt: skip
            runs = _interleaved(
                name,
                live,
                plan.repeat,
                functools.partial(_run_mode, "conns", plan.conns_deadline, conns_args),
                say,
            )
            results[name] = {key: _median_cell(cell, "per_s") for key, cell in runs.items()}
    size = str(plan.size_mb * 1_000_000)
    for mode in BULK_MODES:
        if mode not in phases:
            continue
        runs = _interleaved(
            mode,
            live,
            plan.repeat,
            functools.partial(
                _run_mode, mode, plan.bulk_deadline, ("--size", size, *plan.client_args)
            ),
            say,
        )
        results[mode] = {key: _median_cell(cell, "mb_s") for key, cell in runs.items()}
    return results


def _run_mode(
    mode: str, deadline_s: float, args: tuple[str, ...], server: Server
) -> dict[str, Any]:
    return run_client(mode, server, deadline_s, *args)


def _interleaved(
    name: str,
    servers: list[Server],
    repeat: int,
    run: Callable[[Server], dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` runs of every server, a round at a time, the order reversed every other
    round: this host's rates drift by tens of percent within minutes, and a run right
    after another server's can be faster or slower than one after a pause, so every row
    gets its runs from the same minutes and the same positions."""
    runs: dict[str, list[dict[str, Any]]] = {server.key: [] for server in servers}
    for round_no in range(repeat):
        for server in servers if round_no % 2 == 0 else servers[::-1]:
            say(f"{name:8} {server.key}" + (f" ({round_no + 1}/{repeat})" if repeat > 1 else ""))
            runs[server.key].append(run(server))
    return runs


# ------------------------------------------------------------------ reporting


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def render_table(title: str, headers: list[str], rows: list[list[str]], note: str = "") -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = [f"### {title}", ""]
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " |")
    if note:
        out += ["", note]
    return "\n".join(out)


def _figure(cell: dict[str, Any] | None, key: str) -> float | None:
    if not cell or key not in cell:
        return None
    value = cell[key]
    return float(value) if isinstance(value, int | float) else None


def _flag(cell: dict[str, Any] | None) -> str:
    if not cell:
        return ""
    if cell.get("error"):
        return " (err)"
    failed = cell.get("failed_runs", 0)
    if failed:
        return f" ({failed}/{len(cell.get('runs', []))} err)"
    return " (partial)" if cell.get("timed_out") else ""


def _durability_table(
    servers: list[Server], results: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """Issue 3's figure: each Redis row's bulk MB/s over stcp + MemoryStore on the same
    MTU and offload (``stcp-65000-offload``), in the same run."""
    base_key = next(
        (
            s.key
            for s in servers
            if s.kind == "stcp"
            and s.store == "memory"
            and s.mtu == 65000
            and s.offload is not False
        ),
        None,
    )
    redis_rows = [s for s in servers if s.store == "redis"]
    if base_key is None or not redis_rows:
        return None
    headers = ["server"]
    modes = [m for m in BULK_MODES if m in results]
    for mode in modes:
        headers.append(f"{mode} /mem")
    rows = []
    data: dict[str, Any] = {}
    for server in redis_rows:
        row = [server.key]
        for mode in modes:
            base = _figure(results[mode].get(base_key), "mb_s")
            ratio = _ratio(_figure(results[mode].get(server.key), "mb_s"), base)
            ok = None if ratio is None else ratio >= TARGET_DURABLE_RATIO
            row.append(_fmt(ratio, 2) + _mark(ok))
            data.setdefault(server.key, {})[mode] = {"ratio": ratio, "ok": ok}
        rows.append(row)
    text = render_table(
        f"Durability cost: Redis rows / {base_key}",
        headers,
        rows,
        f"target (issue 3): >= {TARGET_DURABLE_RATIO:.0%} of stcp + MemoryStore. strict "
        "writes every byte before its ACK; ack-on-commit acknowledges committed bytes only "
        "and stores none it receives (it still stores what it sends); async writes behind.",
    )
    return text, data


def summarize(
    servers: list[Server], results: dict[str, dict[str, Any]], plan: Plan
) -> tuple[str, dict[str, Any]]:
    """Tables as text, and the ratios/targets as data for the JSON file."""
    tables: list[str] = []
    summary: dict[str, Any] = {}

    if any(m in results for m in BULK_MODES):
        headers = ["server"]
        for mode in BULK_MODES:
            if mode in results:
                headers += [f"{mode} MB/s", f"{mode} /kveth"]
        rows = []
        for server in servers:
            row = [server.key]
            for mode in BULK_MODES:
                if mode not in results:
                    continue
                cell = results[mode].get(server.key)
                value = _figure(cell, "mb_s")
                ratio = _ratio(value, _figure(results[mode].get(BASELINE), "mb_s"))
                ok = None if server.kind != "stcp" or ratio is None else ratio >= TARGET_BULK_RATIO
                row += [_fmt(value) + _flag(cell), _fmt(ratio, 2) + _mark(ok)]
                summary.setdefault(mode, {})[server.key] = {"mb_s": value, "ratio": ratio, "ok": ok}
            rows.append(row)
        tables.append(
            render_table(
                f"Bulk throughput, {plan.size_mb} MB per transfer (median of {plan.repeat})",
                headers,
                rows,
                f"target: stcp >= {TARGET_BULK_RATIO:.0%} of kernel-veth. upload = client -> "
                "discard, download = chargen -> client, echo = both ways at once (MB/s of "
                f"one direction). MB = 10^6 bytes. Clients' congestion control: "
                f"{client_congestion_control(plan)}.",
            )
        )
        table = _durability_table(servers, results)
        if table is not None:
            text, data = table
            tables.append(text)
            summary["durability"] = data

    if "conns_seq" in results:
        rows = []
        base_seq = _figure(results["conns_seq"].get(BASELINE), "per_s")
        base_c8 = _figure(results["conns_c8"].get(BASELINE), "per_s")
        for server in servers:
            seq = results["conns_seq"].get(server.key)
            c8 = results["conns_c8"].get(server.key)
            seq_v, c8_v = _figure(seq, "per_s"), _figure(c8, "per_s")
            stcp = server.kind == "stcp"
            ok_seq = None if not stcp or seq_v is None else seq_v >= TARGET_CONNS_PER_S
            ok_c8 = None if not stcp or c8_v is None else c8_v >= TARGET_CONNS_PER_S
            failed = sum(r.get("failed", 0) for c in (seq, c8) if c for r in c.get("runs", []))
            rows.append(
                [
                    server.key,
                    _fmt(seq_v) + _flag(seq) + _mark(ok_seq),
                    _fmt(_ratio(seq_v, base_seq), 2),
                    _fmt(c8_v) + _flag(c8) + _mark(ok_c8),
                    _fmt(_ratio(c8_v, base_c8), 2),
                    str(failed),
                ]
            )
            summary.setdefault("conns", {})[server.key] = {
                "seq_per_s": seq_v,
                "c8_per_s": c8_v,
                "seq_ratio": _ratio(seq_v, base_seq),
                "c8_ratio": _ratio(c8_v, base_c8),
                "failed": failed,
                "ok": None if not stcp else bool(ok_seq and ok_c8),
            }
        tables.append(
            render_table(
                f"Connections per second, {plan.conns} connections (median of {plan.repeat})",
                ["server", "sequential /s", "seq /kveth", "8 concurrent /s", "c8 /kveth", "failed"],
                rows,
                f"each connection: connect, send 100 bytes to echo, read them back, close. "
                f"target: stcp >= {TARGET_CONNS_PER_S:,.0f}/s.",
            )
        )

    cost_columns = [
        (phase, unit)
        for phase, unit in (
            ("upload", "MB"),
            ("download", "MB"),
            ("echo", "MB"),
            ("conns_seq", "conn"),
            ("conns_c8", "conn"),
        )
        if phase in results
    ]
    if cost_columns:
        headers = ["server"]
        for phase, unit in cost_columns:
            headers += [f"{phase} us/{unit}", "x kveth"]
        rows = []
        for server in servers:
            row = [server.key]
            for phase, _unit in cost_columns:
                cost = _figure(results[phase].get(server.key), "server_cpu_us")
                base = _figure(results[phase].get(BASELINE), "server_cpu_us")
                row += [_fmt(cost), _fmt(_ratio(cost, base), 1)]
                summary.setdefault("server_cpu_us", {}).setdefault(phase, {})[server.key] = cost
            rows.append(row)
        tables.append(
            render_table(
                "Server CPU per unit of work (lower is better)",
                headers,
                rows,
                "CPU time of the server process (all threads, /proc/PID/task/*/schedstat) per "
                "MB moved or per connection. Steadier than rates on a busy machine, but kernel "
                "TCP work done in softirq context is charged to whichever task runs, so kernel "
                "servers are undercounted: read `x kveth` as a lower bound for stcp's cost.",
            )
        )

    if "scale" in results:
        low, high = min(plan.levels), max(plan.levels)
        rows = []
        kernel_cpu_ratio: float | None = None
        for server in servers:
            cell = results["scale"].get(server.key) or {}
            levels = {lv["connections"]: lv for lv in cell.get("levels", [])}
            lo, hi = levels.get(low), levels.get(high)
            rss_ratio = time_ratio = per_conn_kb = cpu_ratio = None
            if lo and hi:
                rss_ratio = hi["rss_kb"] / lo["rss_kb"]
                time_ratio = hi["round_ms"] / lo["round_ms"] if lo["round_ms"] else None
                per_conn_kb = (hi["rss_kb"] - lo["rss_kb"]) / (high - low)
                if lo.get("server_cpu_ms") and hi.get("server_cpu_ms") is not None:
                    cpu_ratio = hi["server_cpu_ms"] / lo["server_cpu_ms"]
            stcp = server.kind == "stcp"
            if server.key == "kernel-veth":
                kernel_cpu_ratio = cpu_ratio
            vs_kernel = (
                cpu_ratio / kernel_cpu_ratio
                if stcp and cpu_ratio is not None and kernel_cpu_ratio
                else None
            )
            ok_rss = None if not stcp or rss_ratio is None else rss_ratio <= TARGET_SCALE_RATIO
            ok_time = None if not stcp or time_ratio is None else time_ratio <= TARGET_SCALE_RATIO
            ok_cpu = None if not stcp or cpu_ratio is None else cpu_ratio <= TARGET_SCALE_RATIO
            rows.append(
                [
                    server.key + _flag(cell),
                    _fmt(cell.get("base_rss_kb", 0) / 1024 if cell.get("base_rss_kb") else None, 1),
                    _fmt(lo["rss_kb"] / 1024 if lo else None, 1),
                    _fmt(hi["rss_kb"] / 1024 if hi else None, 1),
                    _fmt(rss_ratio, 2) + _mark(ok_rss),
                    _fmt(per_conn_kb, 1),
                    _fmt(lo["round_ms"] if lo else None, 2),
                    _fmt(hi["round_ms"] if hi else None, 2),
                    _fmt(time_ratio, 2) + _mark(ok_time),
                    _fmt(lo.get("server_cpu_ms") if lo else None, 2),
                    _fmt(hi.get("server_cpu_ms") if hi else None, 2),
                    _fmt(cpu_ratio, 2) + _mark(ok_cpu),
                    _fmt(vs_kernel, 2),
                ]
            )
            summary.setdefault("scale", {})[server.key] = {
                "rss_ratio": rss_ratio,
                "time_ratio": time_ratio,
                "server_cpu_ratio": cpu_ratio,
                "server_cpu_ratio_vs_kernel": vs_kernel,
                "kb_per_connection": per_conn_kb,
                "ok": None
                if not stcp
                else bool(ok_rss and (ok_cpu if ok_cpu is not None else ok_time)),
            }
        tables.append(
            render_table(
                f"Scaling, {low} vs {high} concurrent echo connections",
                [
                    "server",
                    "idle RSS MiB",
                    f"RSS@{low} MiB",
                    f"RSS@{high} MiB",
                    f"RSS {high}/{low}",
                    "KiB/conn",
                    f"round@{low} ms",
                    f"round@{high} ms",
                    f"time {high}/{low}",
                    f"srv ms@{low}",
                    f"srv ms@{high}",
                    f"srv {high}/{low}",
                    "srv ratio /kveth",
                ],
                rows,
                "RSS = server VmRSS after one warm-up round; round = one 100-byte echo on "
                f"every connection (median of {plan.rounds}), as the client's wall clock sees "
                "it; srv = server CPU ms per round (all threads, the mean over the timed "
                f"rounds). target: stcp ratios <= {TARGET_SCALE_RATIO:.0f}x for "
                f"{high // low}x the connections; the verdict uses srv, not the client's "
                "wall time, whose own epoll loop grows faster than linearly (see the kernel rows). "
                "srv ratio /kveth = stcp's srv ratio over kernel-veth's in this run: the "
                "machine's caches make every connection dearer as their number grows, kernel "
                "TCP's too (its softirq work is charged to whoever runs, so its srv is noisy).",
            )
        )
    return "\n\n".join(tables), summary


# ------------------------------------------------------------------ main


def ensure_private_namespace(argv: list[str]) -> None:
    """Re-execute under ``unshare --net`` unless this namespace is already private."""
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark creates TUN and veth devices")
    problems = current_namespace_problems()
    if not problems:
        return
    if os.environ.get(REEXEC_MARK):
        raise BenchError(f"the namespace is still not private after unshare: {problems}")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise BenchError("`unshare` is missing: install util-linux")
    env = dict(os.environ, **{REEXEC_MARK: "1"})
    sys.stdout.flush()
    os.execve(unshare, [unshare, "--net", "--", PYTHON, str(Path(__file__).resolve()), *argv], env)


@contextlib.contextmanager
def cleaning_up() -> Iterator[list[Callable[[], None]]]:
    """Collect cleanup actions; run them in reverse order whatever happens."""
    cleanups: list[Callable[[], None]] = []
    try:
        yield cleanups
    finally:
        # A second Ctrl-C must not abort the cleanup half-way.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for action in reversed(cleanups):
                try:
                    action()
                except Exception as exc:
                    print(f"cleanup: {exc!r}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="stcp vs kernel TCP, side by side (run as root; see bench/README.md)",
    )
    parser.add_argument("--quick", action="store_true", help="100 MB, 1,000 connections")
    parser.add_argument("--size", type=int, default=None, help="MB per bulk transfer (500)")
    parser.add_argument("--conns", type=int, default=None, help="connections per conns run")
    parser.add_argument("--levels", default="100,1000", help="scaling levels (100,1000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed echo rounds per level")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument(
        "--servers", default="", help="comma-separated server keys (kernel-veth always runs)"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}"
    )
    parser.add_argument(
        "--cc",
        default=None,
        help="the clients' TCP congestion control, e.g. cubic (default: the system's; see "
        "bench/README.md: a BBR client's pacing shapes stcp's upload on this host)",
    )
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    phases = tuple(p for p in args.phases.split(",") if p)
    if set(phases) - set(PHASES):
        print(f"unknown phase(s): {sorted(set(phases) - set(PHASES))}", file=sys.stderr)
        return 2
    plan = Plan(
        size_mb=args.size or (100 if args.quick else 500),
        conns=args.conns or (1000 if args.quick else 5000),
        levels=tuple(sorted(int(x) for x in args.levels.split(",") if x)),
        rounds=max(1, args.rounds),
        repeat=max(1, args.repeat),
        client_cc=args.cc,
    )
    if len(plan.levels) != 2 or plan.levels[0] < 1:
        print("--levels wants two positive counts, e.g. 100,1000", file=sys.stderr)
        return 2
    # Ctrl-C must interrupt even when started from a script that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    try:
        ensure_private_namespace(argv)
        servers = plan_servers({k for k in args.servers.split(",") if k} or None)
        logdir = RESULTS_DIR / f"{stamp}-logs"  # server stderr, kept for post-mortems
        logdir.mkdir(parents=True, exist_ok=True)
        with cleaning_up() as cleanups:
            run_ip("link", "set", "lo", "up")
            _set_port_range(cleanups)
            for server in servers:
                say(f"start    {server.key}")
                try:
                    start_server(server, logdir, cleanups)
                except (BenchError, StcpConfigError, OSError, subprocess.SubprocessError) as exc:
                    if server.key == BASELINE:
                        raise
                    server.error = str(exc)
                    if server.proc is not None:
                        stop_process(server.proc)  # frees the device; cleanup is idempotent
                    say(f"  {server.key} failed to start: {exc}")
            results = measure(servers, plan, phases, say)
            # Stop the servers now so that their logs (stcp counters) are complete.
            for server in servers:
                if server.proc is not None:
                    if server.error is None and server.proc.poll() is not None:
                        server.extra["died"] = f"exit status {server.proc.returncode}"
                    stop_process(server.proc)
                    server.extra["log_tail"] = _log_tail(server, 3)
    except (BenchError, StcpConfigError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130

    text, summary = summarize(servers, results, plan)
    print(text)
    for server in servers:
        if server.error:
            print(f"\n{server.key}: not measured: {server.error}")
        elif "died" in server.extra:
            print(
                f"\n{server.key}: the server died during the run ({server.extra['died']}); "
                f"later cells are missing. Log: {server.log_path}: {_log_tail(server, 1)}"
            )
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{stamp}.json"
        document = {
            "started": started.isoformat(),
            "seconds": time.monotonic() - t0,
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "plan": {
                "size_mb": plan.size_mb,
                "conns": plan.conns,
                "levels": plan.levels,
                "rounds": plan.rounds,
                "repeat": plan.repeat,
                "phases": phases,
                "client_cc": client_congestion_control(plan),
            },
            "servers": [
                {
                    "key": s.key,
                    "label": s.label,
                    "kind": s.kind,
                    "host": s.host,
                    "mtu": s.mtu,
                    "offload": s.offload,
                    "error": s.error,
                    **s.extra,
                }
                for s in servers
            ],
            "results": results,
            "summary": summary,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
