"""Retransmission timeout computation (RFC 6298)."""

from __future__ import annotations

ALPHA = 1 / 8  # RFC 6298 (2.3)
BETA = 1 / 4  # RFC 6298 (2.3)
K = 4  # RFC 6298 (2.2)
CLOCK_GRANULARITY = 0.001  # G: our timestamps tick in ms (RFC 6298 (2.2))


class RttEstimator:
    """SRTT/RTTVAR/RTO with exponential backoff; runtime only (rebuilt on restore).

    Attributes:
        srtt: Smoothed RTT or None before the first sample.
        rttvar: RTT variation.
        rto: Current retransmission timeout, backoff included.
    """

    __slots__ = ("max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial_rto  # RFC 6298 (2.1)
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, r: float) -> None:
        """Take one RTT measurement ``r`` (seconds); resets any backoff (RFC 6298 (5.7))."""
        if r < 0:
            return
        srtt = self.srtt
        if srtt is None:  # RFC 6298 (2.2)
            srtt = r
            self.rttvar = r / 2
        else:  # RFC 6298 (2.3): RTTVAR first, with the old SRTT
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(srtt - r)
            srtt = (1 - ALPHA) * srtt + ALPHA * r
        self.srtt = srtt
        rto = srtt + max(CLOCK_GRANULARITY, K * self.rttvar)
        # RFC 6298 (2.4) min (Linux 200 ms, see TcpConfig) and (2.5) max.
        self.rto = min(self.max_rto, max(self.min_rto, rto))

    def backoff(self) -> None:
        """RFC 6298 (5.5): double the RTO, capped at the maximum."""
        self.rto = min(self.rto * 2, self.max_rto)
