"""stcp: stateless TCP servers on trio (see README.md).

Public names: ``open_stack``, ``Stack``, ``Stream``, ``TcpInfo``, ``Listener``, ``TcpConfig``,
``MemoryStore``, ``RedisStore``, ``TunDevice``, ``FileSource``, ``Source`` and the exceptions
of ``stcp_framework.errors``. ``RedisStore`` and ``TunDevice`` are imported on first use
(redis-py's import is most of a server's start-up otherwise).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._core import select_core

select_core()  # before anything imports wire/tcp: a stale compiled core never runs

from ._version import __version__ as __version__
from .api import Listener as Listener
from .api import Stack as Stack
from .api import Stream as Stream
from .api import TcpInfo as TcpInfo
from .api import open_stack as open_stack
from .errors import ConnectionAborted as ConnectionAborted
from .errors import ConnectionRefused as ConnectionRefused
from .errors import ConnectionResetByPeer as ConnectionResetByPeer
from .errors import ConnectionTimedOut as ConnectionTimedOut
from .errors import StcpConfigError as StcpConfigError
from .errors import StcpError as StcpError
from .stack.sources import FileSource as FileSource
from .stack.sources import Source as Source
from .stack.sources import SourceError as SourceError
from .store.memory import MemoryStore as MemoryStore
from .tcp.config import TcpConfig as TcpConfig

if TYPE_CHECKING:
    from .link.tun import TunDevice as TunDevice
    from .store.redis import RedisStore as RedisStore

_LAZY = {"RedisStore": ".store.redis", "TunDevice": ".link.tun"}


def __getattr__(name: str) -> object:
    """``RedisStore`` and ``TunDevice``, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
