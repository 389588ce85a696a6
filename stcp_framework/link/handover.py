"""Hand an attached TUN queue to a standby process, so that no packet is lost in between.

A standby (``stcp run --standby``) takes over a queue when the process serving it exits.
If it only attached then, the kernel would drop what arrives for the queue in the gap --
a client's request, say, which it resends at its retransmission timer (~200 ms). So the
serving process offers its descriptor on the abstract Unix socket
``@stcp-tun-fd/DEV/QUEUE`` (``offer``), and a standby takes a duplicate of it
(``take``) -- the same open file, the same queue -- but does not read it until it holds
the queue's claim (``link/tun.py`` ``wait_for_queue``), that is until the serving
process is gone. The queue stays attached through the gap, and what the kernel queues
on it (up to ``txqueuelen`` packets) waits for the standby.

Only a process of the same user gets the descriptor (``SO_PEERCRED``).
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass

import trio

__all__ = ["Handed", "handover_name", "offer", "standby_name", "take"]

logger = logging.getLogger("stcp.link")

TAKE_TIMEOUT = 2.0  # seconds a standby waits for the serving process to answer
_UCRED = struct.Struct("iII")  # pid, uid, gid


def handover_name(dev: str, queue: int) -> str:
    """The abstract socket name (without its leading NUL) for ``dev``'s ``queue``."""
    return f"stcp-tun-fd/{dev}/{queue}"


def standby_name(dev: str, queue: int) -> str:
    """The name a standby for ``dev``'s ``queue`` holds while it waits (``claim_name``).

    Its duplicate keeps the serving process's queue attached; if another process took
    over instead -- a plain ``stcp run`` started after the kill, attaching a new queue --
    the kernel would spread flows over both, and the standby's would be read by nobody.
    So a plain start refuses while this name is held, and a second standby too.
    """
    return f"stcp-tun-standby/{dev}/{queue}"


@dataclass(frozen=True)
class Handed:
    """A duplicate of a serving process's TUN descriptor and how it is set up."""

    fd: int
    mtu: int
    offload: bool
    gso: bool
    tx_gso: bool


async def offer(
    fd: int,
    name: str,
    settings: dict[str, object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Give ``fd`` (with ``settings``: mtu, offload, gso, tx_gso) to every standby of
    this user that asks on ``@name``, until cancelled."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.bind("\0" + name)
        except OSError as exc:
            # (the queue's claim is ours, so this name should be free: say so and go on)
            logger.warning("cannot offer the TUN queue to a standby (@%s): %s", name, exc)
            task_status.started()
            return
        sock.listen(4)
        sock.setblocking(False)
        task_status.started()
        payload = json.dumps(settings).encode()
        uid = os.geteuid()
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            with conn:
                cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                if _UCRED.unpack(cred)[1] != uid:
                    continue
                try:
                    conn.sendmsg(
                        [payload],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                    )
                except OSError:
                    continue  # the standby went away
    finally:
        sock.close()


def take(name: str, *, timeout: float = TAKE_TIMEOUT) -> Handed | None:
    """Ask the process serving on ``@name`` for its descriptor (blocking); ``None`` if
    nobody answers (no such process, or one that does not offer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect("\0" + name)
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(array.array("i").itemsize))
    except OSError:
        return None
    finally:
        sock.close()
    fds = array.array("i")
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(value[: len(value) - len(value) % fds.itemsize])
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    try:
        settings = json.loads(data)
        return Handed(
            fd=fds[0],
            mtu=int(settings["mtu"]),
            offload=bool(settings["offload"]),
            gso=bool(settings["gso"]),
            tx_gso=bool(settings["tx_gso"]),
        )
    except (ValueError, KeyError, TypeError):
        os.close(fds[0])
        return None
