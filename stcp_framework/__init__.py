"""stcp: stateless TCP servers on trio (see README.md).

Public names: ``open_stack``, ``Stack``, ``Stream``, ``TcpInfo``, ``Listener``, ``TcpConfig``,
``MemoryStore`` and the exceptions of ``stcp_framework.errors``.
"""

from __future__ import annotations

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
