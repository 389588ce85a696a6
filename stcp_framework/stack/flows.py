"""The flow table: 4-tuple -> connection, plus what the runtime keeps per flow."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..tcp.machine import Connection
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

    def part(addr: bytes, port: int) -> str:
        text = format_addr(addr)
        return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"

    return f"{part(local, lport)}-{part(remote, rport)}/{iss:08x}"


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
    """The tasks waiting on one side of a flow: a trio ``ParkingLot``, made when the first
    task parks and let go once all are woken. Most flows have no one waiting most of
    the time -- idle, in TIME-WAIT -- and an empty ``ParkingLot`` is ~0.3 KB, two per
    flow: ~0.6 of the ~4.5 KB a TIME-WAIT connection holds in the process. A new lot
    per wait costs ~1 us (<0.5 % of a short connection's CPU). ``bool()`` says whether
    any task waits."""

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot: trio.lowlevel.ParkingLot | None = None

    def __bool__(self) -> bool:
        lot = self._lot
        return lot is not None and bool(lot)

    async def park(self) -> None:
        """Wait until ``unpark_all`` (a checkpoint; cancellable like ``ParkingLot.park``)."""
        lot = self._lot
        if lot is None:
            lot = self._lot = trio.lowlevel.ParkingLot()
        await lot.park()

    def unpark_all(self) -> None:
        """Wake every waiting task (each re-checks its condition)."""
        lot = self._lot
        if lot is not None:
            self._lot = None  # all are rescheduled; the next to park makes a new lot
            lot.unpark_all()


@dataclass(eq=False, slots=True)
class Flow:
    """One connection as the runtime sees it.

    ``lot`` wakes every task waiting on this flow's send side or connection (writers,
    ``wait_durable``, connect) whenever the machine reported an event or the durable
    version moved; ``rx_lot`` wakes the reader, on events other than ``SendSpace``
    alone (the peer's ACK of our data is no news to a reader). Waiters re-check their
    condition.
    """

    key: FlowKey
    flow_id: str
    conn: Connection
    listener_port: int | None = None
    lot: Waiters = field(default_factory=Waiters)
    rx_lot: Waiters = field(default_factory=Waiters)
    deadline_at: float | None = None  # the machine's next deadline
    heap_at: float | None = None  # its live timer-heap entry (<= deadline_at)
    connected: bool = False
    accepted: bool = False  # handed to a listener's accept queue
    error: BaseException | None = None  # Reset / TimedOut, as an exception for the API
    reset: bool = False
    eof: bool = False
    closed: bool = False  # reached CLOSED and left the flow table
    app_closed: bool = False
    dirty: bool = False
    held: bool = False  # rounds leave it dirty until its app task resumes (Runtime.hold)
    durable_version: int = 0  # the newest of this flow's delta versions the store holds
    recovered: bool = False  # restored from the store after a restart
    app_state: bytes | None = None  # stored with the last commit (level 2)
    forgettable: bool = True  # remove the store record once CLOSED
    backlog: Listener | None = None  # counted in this listener's SYN backlog

    @property
    def remote(self) -> tuple[str, int]:
        return format_addr(self.key[0]), self.key[1]

    @property
    def local(self) -> tuple[str, int]:
        return format_addr(self.key[2]), self.key[3]
