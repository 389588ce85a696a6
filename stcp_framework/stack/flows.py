"""The flow table: 4-tuple -> connection, plus what the runtime keeps per flow."""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from typing import TYPE_CHECKING

import trio

from ..tcp.machine import Connection
from ..wire.fmt import endpoint_text

if TYPE_CHECKING:
    from ..tcp.timewait import TimeWaitRecord
    from .runtime import Listener

_AF_INET = socket.AF_INET
FlowKey = tuple[bytes, int, bytes, int]
"""(remote address, remote port, local address, local port), addresses packed."""


def format_addr(packed: bytes) -> str:
    """Text form of a packed IPv4/IPv6 address (``inet_ntop``: ~10x cheaper than
    ``ipaddress``, and it runs for every new connection's flow id)."""
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return str(ipaddress.IPv6Address(packed))  # the same compressed form as before


def flow_id_of(key: FlowKey, iss: int) -> str:
    """A readable id, unique per incarnation: ``local:port-remote:port/ISS`` (hex ISS).

    The ISS makes a new connection that reuses a 4-tuple (Linux reuses ports within
    seconds) a different record from the one before it, whatever state that one left.
    """
    remote, rport, local, lport = key
    if len(local) == 4:  # IPv4, the common case, in one format
        ntop = socket.inet_ntop
        return f"{ntop(_AF_INET, local)}:{lport}-{ntop(_AF_INET, remote)}:{rport}/{iss:08x}"
    here = endpoint_text(format_addr(local), lport)
    there = endpoint_text(format_addr(remote), rport)
    return f"{here}-{there}/{iss:08x}"


def flow_key_of(flow_id: str) -> FlowKey:
    """Inverse of ``flow_id_of`` (the ISS is dropped).

    Raises:
        ValueError: Not an id made by ``flow_id_of``.
    """
    ends, _, _iss = flow_id.partition("/")
    local_text, sep, remote_text = ends.partition("-")
    if not sep:
        raise ValueError(f"not a flow id: {flow_id!r}")

    def parse(text: str) -> tuple[bytes, int]:
        host, _, port = text.rpartition(":")
        try:  # inet_pton: ~10x cheaper than ipaddress (10,000 flows on restore)
            if host.startswith("["):
                return socket.inet_pton(socket.AF_INET6, host[1:-1]), int(port)
            return socket.inet_pton(socket.AF_INET, host), int(port)
        except OSError as exc:
            raise ValueError(f"not a flow id: {flow_id!r}") from exc

    local, lport = parse(local_text)
    remote, rport = parse(remote_text)
    return remote, rport, local, lport


class Waiters:
    """The tasks waiting on one side of a flow, woken all at once: a list of trio tasks
    parked with ``trio.lowlevel.wait_task_rescheduled``, made when the first task parks
    and let go when ``unpark_all`` wakes them.

    Not a trio ``ParkingLot``: one is an attrs object with an ``OrderedDict`` (~0.3 KB,
    and a flow has two), and its park and wake-up go through a generator and a dict
    per call. Here almost always one task waits (the flow's reader or writer), so a
    list of one does: a parked task costs ~0.5 KB less (``tracemalloc``, 2,000 parked
    readers: 2,647 -> 2,122 bytes each, the task and its frames included), and an echo
    round at 100 connections ~5 % less CPU. ``bool()`` says whether any task waits.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] | None = None

    def __bool__(self) -> bool:
        return bool(self._tasks)

    @trio.lowlevel.enable_ki_protection
    async def park(self) -> None:
        """Wait until ``unpark_all`` -- a checkpoint, cancellable as ``ParkingLot.park``
        is. A cancelled waiter leaves the list (``abort``); one already woken is out of
        it (``unpark_all`` took the whole list) and its wake-up stands."""
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = [task]
        else:
            tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            if not tasks and self._tasks is tasks:
                self._tasks = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    @trio.lowlevel.enable_ki_protection
    def unpark_all(self) -> None:
        """Wake every waiting task (each re-checks its condition)."""
        tasks = self._tasks
        if tasks is not None:
            self._tasks = None  # the next to park makes a new list
            reschedule = trio.lowlevel.reschedule
            for task in tasks:
                reschedule(task)


class Flow:
    """One connection as the runtime sees it.

    ``lot`` wakes every task waiting on this flow's send side or connection (writers,
    ``wait_durable``, connect) whenever the machine reported an event or the durable
    version moved; ``rx_lot`` wakes the reader, on events other than ``SendSpace``
    alone (the peer's ACK of our data is no news to a reader). Waiters re-check their
    condition.

    ``conn`` is the connection's machine. A quiet TIME-WAIT connection is kept as a
    compact record instead (``freeze``, ``tcp/timewait.py``; ``time_wait`` is then the
    record): the first use of ``conn`` rebuilds the machine from it.
    """

    __slots__ = (
        "_conn",
        "accepted",
        "app_state",
        "backlog",
        "closed",
        "connected",
        "deadline_at",
        "dirty",
        "durable_version",
        "eof",
        "error",
        "flow_id",
        "forget_pending",
        "forgettable",
        "fresh",
        "heap_at",
        "held",
        "kept",
        "key",
        "listener_port",
        "lot",
        "md5_key",
        "reader_woken",
        "recovered",
        "reset",
        "rx_lot",
        "time_wait",
        "unclaimed_until",
    )

    def __init__(
        self,
        key: FlowKey,
        flow_id: str,
        conn: Connection,
        listener_port: int | None = None,
        *,
        recovered: bool = False,
        app_state: bytes | None = None,
    ) -> None:
        self.key = key
        self.flow_id = flow_id
        self._conn: Connection | None = conn
        self.time_wait: TimeWaitRecord | None = None  # frozen: the record, ``_conn`` None
        self.listener_port = listener_port
        self.lot = Waiters()
        self.rx_lot = Waiters()
        self.deadline_at: float | None = None  # the machine's next deadline
        self.heap_at: float | None = None  # its live timer-heap entry (<= deadline_at)
        self.connected = False
        self.accepted = False  # handed to a listener's accept queue
        self.error: BaseException | None = None  # Reset / TimedOut, as an exception for the API
        self.reset = False
        self.eof = False
        self.closed = False  # reached CLOSED and left the flow table
        self.dirty = False
        self.held = False  # rounds leave it dirty until its app task resumes (Runtime.hold)
        self.reader_woken = False  # woken with new bytes, not yet run (Runtime._arrive)
        self.fresh = False  # accepted before its round, handler not yet waiting to read
        self.durable_version = 0  # the newest of this flow's delta versions the store holds
        self.recovered = recovered  # restored from the store after a restart
        self.app_state = app_state  # stored with the last commit (level 2)
        self.forgettable = True  # remove the store record once CLOSED
        self.forget_pending = False  # CLOSED, forgotten once its last deltas are stored
        self.md5_key: bytes | None = None  # its peer's TCP MD5 key (stack/signatures.py)
        # CLOSED, but its record stays: its app has not committed all it received
        # (Runtime._remove_flow, G4)
        self.kept = False
        self.backlog: Listener | None = None  # counted in this listener's SYN backlog
        # restored, and no listener or reattach() has taken it: reset at this time
        self.unclaimed_until = 0.0

    @property
    def takeable(self) -> bool:
        """Whether an app may still take (or go on with) its stream: a live connection,
        or a closed one kept for the commits of bytes it left uncommitted (G4)."""
        return not self.closed or self.kept

    @property
    def conn(self) -> Connection:
        conn = self._conn
        if conn is None:
            record = self.time_wait
            assert record is not None
            conn = self._conn = Connection.thaw_time_wait(record)
            self.time_wait = None
        return conn

    def pending(self) -> bool:
        """``undurable``, or its machine has changes no drain has taken yet."""
        conn = self._conn
        return conn is not None and (self.durable_version < conn.version or conn.delta_pending())

    def undurable(self) -> bool:
        """Whether deltas of this flow are not stored yet (a frozen TIME-WAIT flow's
        all are: it froze only once they were)."""
        conn = self._conn
        return conn is not None and self.durable_version < conn.version

    def freeze(self, totals: Counter[str]) -> bool:
        """Keep a quiet TIME-WAIT connection as its compact record; False if it is not
        one (``Connection.freeze_time_wait``). Its event counters go to ``totals``."""
        conn = self._conn
        if conn is None:
            return True
        record = conn.freeze_time_wait()
        if record is None:
            return False
        self.time_wait = record
        self._conn = None
        totals.update(conn.counters)
        return True

    def count_into(self, totals: Counter[str]) -> None:
        """Add the connection's event counters to ``totals`` (a flow that ends)."""
        conn = self._conn
        if conn is not None:
            totals.update(conn.counters)

    def __repr__(self) -> str:
        frozen = " (frozen TIME-WAIT)" if self.time_wait is not None else ""
        return f"<Flow {self.flow_id}{frozen}>"

    @property
    def remote(self) -> tuple[str, int]:
        return format_addr(self.key[0]), self.key[1]

    @property
    def local(self) -> tuple[str, int]:
        return format_addr(self.key[2]), self.key[3]


def holds_uncommitted(flow: Flow) -> bool:
    """Whether ``flow``'s level-2 app holds its stream (or may, after a restore) with
    received bytes it has not committed: its store record must not go (G4)."""
    if flow.time_wait is not None:
        return False  # (frozen only once all it received was committed)
    conn = flow.conn
    tcb = conn.tcb
    return (
        flow.error is None  # (a reset or timed-out stream is not one to replay)
        and tcb.manual_commit
        and not tcb.app_closed
        and (flow.accepted or flow.recovered or tcb.active_open)
        and tcb.commit_offset < conn.rcv_buf.end_offset
    )
