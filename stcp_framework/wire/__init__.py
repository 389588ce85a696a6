"""wire: bytes <-> values for IPv4/IPv6 + TCP. Pure: no state, no I/O, no clock.

Theory of operation
-------------------

Receiving: the runtime hands each packet read from the device, as a ``memoryview``
of its batch buffer, to ``parse_packet_untrusted``. That function either returns a
``Packet`` (NamedTuples all the way down; the TCP payload stays a view of the batch
buffer, never copied) or raises ``MalformedPacket`` carrying a ``DropReason`` that
the runtime counts (DESIGN.md G8). It never raises anything else, whatever the
bytes: that is the ``*_untrusted`` contract (STYLE.md §5, trio ``_dtls.py``) and it
is fuzzed in ``tests/wire``. Validation runs in two phases, integrity (lengths,
checksums, data offset) and then sanity (fragments, addresses, ports, flags,
options); see ``packet.py``.

Sending: the machine produces header values; the stack calls ``build_packet``,
which packs IP and TCP headers with ``struct.pack_into`` into one new
``bytearray`` and copies the payload into it once. Options are emitted in Linux's
order and padding (``options.py``), so our segments look like the kernel's.

Checksums: ``checksum.py`` is the one hot arithmetic function (RFC 1071 via big
integers); with device offload, ``verify_checksum=False`` / ``offload_checksum=True``
skip the per-byte work entirely.

Sequence numbers are 32-bit and wrap: compare them only with ``seq.py``.

Not implemented: IP fragment reassembly (fragments are dropped), IPv4 options
(skipped by IHL, not interpreted), IPv6 jumbograms, TCP-AO (MD5 signatures, RFC
2385, are in ``tcp_md5.py``), MPTCP, urgent data
semantics (the pointer is carried, nothing more), ECN negotiation (flags carried).
"""

from __future__ import annotations

from .checksum import (
    internet_checksum as internet_checksum,
)
from .checksum import (
    ones_complement_sum as ones_complement_sum,
)
from .checksum import (
    pseudo_header_sum as pseudo_header_sum,
)
from .checksum import (
    tcp_checksum_ok as tcp_checksum_ok,
)
from .drop import DropReason as DropReason
from .drop import MalformedPacket as MalformedPacket
from .fmt import format_packet as format_packet
from .fmt import format_segment as format_segment
from .options import emit_options as emit_options
from .options import parse_options_untrusted as parse_options_untrusted
from .packet import build_packet as build_packet
from .packet import parse_packet_untrusted as parse_packet_untrusted
from .seq import Seq as Seq
from .seq import seq_add as seq_add
from .seq import seq_diff as seq_diff
from .seq import seq_ge as seq_ge
from .seq import seq_gt as seq_gt
from .seq import seq_in_window as seq_in_window
from .seq import seq_le as seq_le
from .seq import seq_lt as seq_lt
from .tcp import ACK as ACK
from .tcp import FIN as FIN
from .tcp import NO_OPTIONS as NO_OPTIONS
from .tcp import PSH as PSH
from .tcp import RST as RST
from .tcp import SYN as SYN
from .tcp import URG as URG
from .tcp import Packet as Packet
from .tcp import TcpFlags as TcpFlags
from .tcp import TcpOptions as TcpOptions
from .tcp import TcpSegment as TcpSegment
