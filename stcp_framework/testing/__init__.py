"""The public test kit (like ``trio.testing``): stcp over a simulated network.

* ``open_sim_pair(seed, ...)``: a client and a server stack over one seeded
  ``SimNetwork`` (loss, duplication, reordering, corruption, delay), deterministic under
  ``trio.testing.MockClock(autojump_threshold=0)``.
* ``check_stcp_stream()``: ``trio.testing.check_half_closeable_stream`` on stcp streams.
* ``RestartableServer`` and ``crash_after_each_packet``: a server stack that a network
  tap crashes after chosen packets and that restarts from its store (crash tests).
* ``clog``, ``send_space``, ``connection_counters``: helpers for flow-control and
  retransmission tests.
"""

from __future__ import annotations

from ._check_streams import CHECK_CONFIG as CHECK_CONFIG
from ._check_streams import check_stcp_stream as check_stcp_stream
from ._check_streams import clog as clog
from ._check_streams import connection_counters as connection_counters
from ._check_streams import send_space as send_space
from ._crash import Restart as Restart
from ._crash import RestartableServer as RestartableServer
from ._crash import crash_after_each_packet as crash_after_each_packet
from ._sim_pair import CLIENT_ADDRESS as CLIENT_ADDRESS
from ._sim_pair import CLIENT_ADDRESS6 as CLIENT_ADDRESS6
from ._sim_pair import SERVER_ADDRESS as SERVER_ADDRESS
from ._sim_pair import SERVER_ADDRESS6 as SERVER_ADDRESS6
from ._sim_pair import SimPair as SimPair
from ._sim_pair import open_sim_pair as open_sim_pair
