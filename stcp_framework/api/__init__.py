"""The public surface; re-exported by ``stcp_framework``."""

from __future__ import annotations

from .listener import Listener as Listener
from .open import Stack as Stack
from .open import open_stack as open_stack
from .stream import Stream as Stream
from .tcp_info import TcpInfo as TcpInfo
