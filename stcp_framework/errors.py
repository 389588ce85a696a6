"""The public exception hierarchy (STYLE.md §8)."""

from __future__ import annotations


class StcpError(Exception):
    """Base class of every stcp exception."""


class StcpConfigError(StcpError):
    """Bad configuration or a missing privilege; the message is one line saying what to do."""


class ConnectionResetByPeer(StcpError):
    """The peer reset the connection (the cause of a ``trio.BrokenResourceError``)."""


class ConnectionRefused(StcpError):
    """The peer answered our SYN with RST."""


class ConnectionTimedOut(StcpError):
    """Retransmissions were exhausted: the peer stopped answering."""


class ConnectionAborted(StcpError):
    """This side reset the connection because it could not keep TCP's promise: the
    message says why (a restored async-mode connection whose crash lost bytes it had
    acknowledged). The cause of a ``trio.BrokenResourceError``."""
