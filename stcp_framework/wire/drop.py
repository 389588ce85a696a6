"""Why a packet was dropped. ``MalformedPacket`` is the only exception ``wire`` raises."""

from __future__ import annotations

import enum


class DropReason(enum.Enum):
    """Reasons a received packet is dropped; the runtime counts drops per reason (G8)."""

    TOO_SHORT = "too-short"
    BAD_VERSION = "bad-ip-version"
    BAD_HEADER_LENGTH = "bad-ip-header-length"
    BAD_TOTAL_LENGTH = "bad-ip-total-length"
    BAD_IP_CHECKSUM = "bad-ip-checksum"
    FRAGMENT = "ip-fragment"
    BAD_EXTENSION_HEADER = "bad-ipv6-extension-header"
    NOT_TCP = "not-tcp"
    BAD_ICMP = "bad-icmp-too-big"
    BAD_ADDRESS = "bad-address"
    BAD_DATA_OFFSET = "bad-tcp-data-offset"
    BAD_TCP_CHECKSUM = "bad-tcp-checksum"
    BAD_OPTION = "bad-tcp-option"
    BAD_PORT = "bad-tcp-port"
    BAD_FLAGS = "bad-tcp-flags"
    NO_FLOW = "no-flow"
    BACKLOG_FULL = "syn-backlog-full"
    RESTORING = "restoring"


class MalformedPacket(Exception):
    """A packet that cannot be parsed or is not legal; carries a ``DropReason``."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
