"""Errors the tcp layer raises for misuse by the application (h11's Local/Remote split).

Peer behaviour never raises: the machine answers as the RFC says and counts.
"""

from __future__ import annotations


class LocalProtocolError(Exception):
    """The application called something the connection's state does not allow
    (e.g. ``app_send`` after ``app_shutdown`` or on a reset connection)."""
