"""``stcp run --workers N``: N worker processes on one multi-queue TUN device.

One Python process handles one core's worth of packets. With ``--workers N`` the
command becomes a small supervisor: it starts N copies of itself (``--worker I``), each
holding queue I of the device (``TunDevice.open(queue=I)``) under its own instance name
(``NAME.wI``), so each claims, stores and restores only its own flows, and segments that
reach the wrong worker are forwarded (``stack/siblings.py``).

The supervisor:
    * starts worker 0 first and waits for its "serving" line, so a mistake (no device,
      no privilege, a busy queue) is reported once, by that worker, and the supervisor
      exits with its status; then the others;
    * prints one "serving" line when all are up, and one line per worker event;
    * restarts a worker that dies (any end other than exit status 0), at once the first
      time, then with a growing pause if it keeps dying within seconds of its start;
      the restarted worker restores its flows like any restarted ``stcp run``; one that
      fails to come back is tried again, unless it exits with status 2 (a
      ``StcpConfigError``: no device, ...), which stops the server;
    * stops every worker with SIGTERM on SIGTERM/SIGINT (SIGKILL after 10 s), and
      stops everything when a worker exits with status 0 (e.g. on a terminal's Ctrl-C);
    * makes each worker die with it (``PR_SET_PDEATHSIG``): ``kill -9`` of the
      supervisor is a crash of the whole server, which the next ``stcp run`` restores.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys

import trio

from ..errors import StcpConfigError
from .endpoint import format_endpoint
from .netns import ip_json

__all__ = ["die_with_parent", "pin_worker", "say", "supervise", "worker_instance"]

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 10.0
START_TIMEOUT = 60.0
CONFIG_ERROR_STATUS = 2  # what `stcp` exits with on a StcpConfigError (cli/main.py)
_QUICK_DEATH = 5.0  # a worker that dies sooner than this after its start is backed off
_MAX_PAUSE = 5.0


def worker_instance(instance: str, index: int) -> str:
    """The instance name worker ``index`` stores its flows under."""
    return f"{instance}.w{index}"


def pin_worker(index: int) -> int | None:
    """Pin this process (worker ``index``) to one CPU of those it may run on.

    Worker ``i`` takes the ``i``-th allowed CPU (round robin if there are more workers
    than CPUs), as nginx's ``worker_cpu_affinity auto`` does. On this project's 2-core
    machine that served 5-18 % more connections per second than letting the scheduler
    move the workers (four alternating pairs of runs, ``docs/internals.md``).

    Returns:
        The CPU, or ``None`` if the system refused (the worker then runs unpinned).
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[index % len(allowed)]
        os.sched_setaffinity(0, {cpu})
    except (OSError, IndexError):
        return None
    return cpu


def say(line: str) -> None:
    """Write ``line`` to stderr in one ``write``: workers share their supervisor's
    stderr, and ``print`` writes a line and its end separately (lines would mix)."""
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), (line + "\n").encode())


def die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child when the thread that forks it ends (prctl(2);
    fork from a thread that lives as long as the parent: see ``_Child``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class _Child:
    """A worker process forked by the trio thread itself.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, and
    ``trio.lowlevel.open_process`` forks in a worker thread that trio retires after a
    few idle seconds -- which killed healthy workers. So: ``subprocess.Popen`` here (a
    fork and exec take milliseconds), its exit awaited through a pidfd, its stdout
    read as a trio stream.
    """

    def __init__(self, command: list[str]) -> None:
        self._popen = subprocess.Popen(command, stdout=subprocess.PIPE, preexec_fn=die_with_parent)
        self.pid = self._popen.pid
        assert self._popen.stdout is not None
        self.stdout = trio.lowlevel.FdStream(os.dup(self._popen.stdout.fileno()))
        self._popen.stdout.close()
        self._pidfd = os.pidfd_open(self.pid)
        self._watcher: trio.Event | None = None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for the exit; any number of tasks may wait (one watches the pidfd)."""
        while self._popen.poll() is None:
            if self._watcher is None:
                self._watcher = trio.Event()
                try:
                    await trio.lowlevel.wait_readable(self._pidfd)
                finally:
                    watcher, self._watcher = self._watcher, None
                    watcher.set()
            else:
                await self._watcher.wait()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        return self._popen.wait()

    def send_signal(self, number: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(number)


class _Worker:
    def __init__(self, index: int, command: list[str], *, standby: bool = False) -> None:
        self.index = index
        self.command = command
        self.standby = standby  # keep a standby process for this worker's queue
        self.process: _Child | None = None
        self.spare: _Child | None = None  # ``--standby``: waits to take over the queue
        self.banner = ""

    async def start(self) -> int | None:
        """Exec the worker and wait for its banner; its exit status if it ends first."""
        await trio.lowlevel.checkpoint()
        process = self.process = _Child(self.command)
        line = await _first_line(process)
        if not line:
            return process.returncode if process.returncode is not None else 1
        self.banner = line
        return None

    async def start_spare(self) -> None:
        """Exec a standby for this worker's queue and wait until it stands by (the
        server goes on without one if it does not)."""
        await trio.lowlevel.checkpoint()
        spare = _Child([*self.command, "--standby"])
        line = await _first_line(spare)
        if line.startswith("stcp: standing by"):
            self.spare = spare
            say(f"stcp: worker {self.index}: standby (pid {spare.pid}) ready")
        else:
            await _stop(spare)
            why = line or _describe(spare.returncode or 1)
            say(f"stcp: worker {self.index}: no standby ({why})")

    async def promote_spare(self) -> bool:
        """The worker died: its standby takes over. True once the standby serves."""
        spare, self.spare = self.spare, None
        if spare is None or spare.returncode is not None:
            return False
        line = await _first_line(spare)
        if not line:
            return False
        self.process = spare
        self.banner = line
        return True

    async def relay_output(self) -> None:
        """Copy what the worker prints after its banner (it prints little)."""
        assert self.process is not None
        async for chunk in self.process.stdout:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()


async def _first_line(process: _Child) -> str:
    """The next line ``process`` prints (within ``START_TIMEOUT``); "" if it ends or
    stays silent, and then it is stopped."""
    buffer = b""
    try:
        with trio.move_on_after(START_TIMEOUT):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
    except BaseException:  # cancelled (the server stops): no worker left behind
        with trio.CancelScope(shield=True):
            await _stop(process)
        raise
    line, _, rest = buffer.partition(b"\n")
    if not line:
        await _stop(process)
        await process.stdout.aclose()
        return ""
    if rest:
        sys.stdout.buffer.write(rest)
    return line.decode(errors="replace").strip()


async def _stop(process: _Child) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
    await process.wait()


def supervise(args: argparse.Namespace, store: str) -> int:
    """Run ``args.workers`` workers of ``stcp run`` (``store``: a resolved store spec)."""
    if single_queue_device(args.dev):
        raise StcpConfigError(
            f"TUN device {args.dev} has a single queue, so it takes one worker: recreate it "
            f"with `stcp net down --dev {args.dev}` and `stcp net up`"
        )
    return trio.run(_supervise, args, store)


def single_queue_device(dev: str) -> bool:
    """Whether ``dev`` is a TUN device without ``IFF_MULTI_QUEUE`` (``ip -d link``).

    False when it is missing or unreadable: worker 0 then says what is wrong.
    """
    try:
        links = ip_json("-d", "link", "show", "dev", dev)
    except StcpConfigError:
        return False
    info = links[0].get("linkinfo", {}) if links else {}
    data = info.get("info_data") if isinstance(info, dict) else None
    return (
        isinstance(data, dict)
        and info.get("info_kind") == "tun"
        and not data.get("multi_queue", True)
    )


def _worker_command(args: argparse.Namespace, store: str, index: int) -> list[str]:
    command = [
        sys.executable, "-m", "stcp_framework.cli",
        "--log-level", args.log_level,
        "run", args.service, "--dev", args.dev,
        "--store", store, "--instance", args.instance, "--durability", args.durability,
        "--workers", str(args.workers), "--worker", str(index),
        "--cpu-affinity", args.cpu_affinity,
    ]  # fmt: skip
    # (no --store-dir: ``store`` is a URL, the embedded store's resolved already)
    if args.pcap:
        command += ["--pcap", f"{args.pcap}.w{index}"]
        if args.pcap_snaplen is not None:
            command += ["--pcap-snaplen", str(args.pcap_snaplen)]
    for host, port in args.listen:
        command += ["--listen", format_endpoint(host, port)]
    return command


async def _supervise(args: argparse.Namespace, store: str) -> int:
    workers = [
        _Worker(i, _worker_command(args, store, i), standby=args.standby)
        for i in range(args.workers)
    ]
    status = 0
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            failed: int | None = None
            interrupted = False
            async with trio.open_nursery() as starting:

                async def stop_starting() -> None:
                    nonlocal interrupted
                    async for _ in signals:  # (a worker may take a minute to start)
                        interrupted = True
                        starting.cancel_scope.cancel()
                        return

                starting.start_soon(stop_starting)
                for worker in workers:
                    failed = await worker.start()
                    if failed is not None:
                        if failed != CONFIG_ERROR_STATUS:  # (that one said why itself)
                            say(
                                f"stcp: error: worker {worker.index} did not start within "
                                f"{START_TIMEOUT:g} s ({_describe(failed)}); stopping"
                            )
                        break
                starting.cancel_scope.cancel()
            if failed is not None or interrupted:
                with trio.CancelScope(shield=True):
                    for other in workers:
                        if other.process is not None:
                            await _stop(other.process)
                if interrupted:
                    return 0
                assert failed is not None
                return failed if failed > 0 else 1
            pids = ", ".join(str(w.process.pid) for w in workers if w.process is not None)
            first = workers[0].banner.removeprefix("stcp: ")
            print(
                f"stcp: {first.split(' (', 1)[0]} with {args.workers} workers (pids {pids})",
                flush=True,
            )
            for worker in workers:
                _print_banner(worker)
            done = trio.Event()
            outcome: list[int] = []
            for worker in workers:
                nursery.start_soon(_keep, worker, done, outcome)
            async with trio.open_nursery() as waiter:

                async def on_signal() -> None:
                    async for _ in signals:
                        done.set()
                        return

                waiter.start_soon(on_signal)
                await done.wait()
                waiter.cancel_scope.cancel()
            status = outcome[0] if outcome else 0
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as stopper:
                for worker in workers:
                    for process in (worker.process, worker.spare):
                        if process is not None:
                            stopper.start_soon(_stop, process)
        nursery.cancel_scope.cancel()
    return status


async def _mind_spare(worker: _Worker, done: trio.Event) -> None:
    """Start another standby whenever the worker's standby dies (while the worker
    serves: ``_keep`` cancels this when the worker dies), unless the server stops."""
    while worker.spare is not None:
        spare = worker.spare
        code = await spare.wait()
        if done.is_set():
            return
        if worker.spare is spare:
            worker.spare = None
            say(f"stcp: worker {worker.index}: standby (pid {spare.pid}) {_describe(code)}")
            await worker.start_spare()


def _print_banner(worker: _Worker) -> None:
    print(f"stcp: worker {worker.index}: {worker.banner.removeprefix('stcp: ')}", flush=True)


async def _keep(worker: _Worker, done: trio.Event, outcome: list[int]) -> None:
    """Relay the worker's output; restart it whenever it dies -- or, with a standby
    standing by, let that one take over (and start another standby).

    A worker that fails to start again is retried with a growing pause, unless it
    exits with status 2 (``StcpConfigError``, or ``StoreRefused``: a setting that will
    not fix itself), which stops the whole server.
    """
    pause = 0.0
    if worker.standby:
        await worker.start_spare()
    while True:
        process = worker.process
        assert process is not None
        started = trio.current_time()
        async with trio.open_nursery() as relay:
            relay.start_soon(worker.relay_output)
            relay.start_soon(_mind_spare, worker, done)
            await process.wait()
            relay.cancel_scope.cancel()
        await process.stdout.aclose()
        if done.is_set():
            return
        code = process.returncode
        assert code is not None
        if code == 0:
            done.set()  # stopped on purpose (its own SIGINT): stop them all
            return
        spare = worker.spare
        if spare is not None and await worker.promote_spare():
            say(
                f"stcp: worker {worker.index} (pid {process.pid}) {_describe(code)}: "
                f"its standby (pid {spare.pid}) took over"
            )
            print(
                f"stcp: worker {worker.index}: {worker.banner.removeprefix('stcp: ')}", flush=True
            )
            await worker.start_spare()
            continue
        say(f"stcp: worker {worker.index} (pid {process.pid}) {_describe(code)}: restarting")
        quick = trio.current_time() - started < _QUICK_DEATH
        while True:
            pause = min(_MAX_PAUSE, max(0.5, pause * 2)) if quick else 0.0
            await trio.sleep(pause)
            failed = await worker.start()
            if failed is None:
                break
            if failed == CONFIG_ERROR_STATUS:
                say(f"stcp: worker {worker.index} cannot start again: stopping")
                outcome.append(failed)
                done.set()
                return
            say(f"stcp: worker {worker.index} did not start ({_describe(failed)}): retrying")
            quick = True
        _print_banner(worker)
        if worker.standby:
            await worker.start_spare()
