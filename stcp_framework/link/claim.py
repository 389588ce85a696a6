"""Claim a name for this process: bind an abstract Unix datagram socket.

Abstract socket names (a leading NUL) live in the network namespace, as device names
do, need no file and vanish with the process that bound them, also after ``SIGKILL``:
a natural "one holder at a time" lock for a TUN queue or a worker index.
"""

from __future__ import annotations

import errno
import socket
import time

__all__ = ["CLAIM_WAIT", "claim_name"]

CLAIM_WAIT = 1.0
"""Seconds a claim waits for a holder that is exiting: a worker killed together with its
supervisor (``PR_SET_PDEATHSIG``) may still be tearing down when the next one starts."""
_POLL = 0.02


def claim_name(name: str, *, wait: float = CLAIM_WAIT, poll: float = _POLL) -> socket.socket | None:
    """Bind ``@name``; ``None`` if another process still holds it after ``wait`` seconds
    (tried every ``poll`` seconds).

    The returned socket is the claim: close it to release the name. It is blocking and
    close-on-exec; the caller may use it as a datagram socket.
    """
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind("\0" + name)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)
            continue
        return sock
