"""Tunables of one connection, with the RFC or Linux value each default comes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection settings; one instance is shared by every connection of a stack.

    Attributes:
        mss: Largest payload we accept per segment (advertised in our SYN); the stack
            derives it from the device MTU (MTU - 40 for IPv4, - 60 for IPv6).
        recv_buffer_size: Receive buffer cap in bytes (bytes received and not yet read
            by the app, or in issue 3 not yet committed). The advertised window never
            exceeds the free space (G6). The window scale is derived from it.
        send_buffer_size: Send buffer cap: unacknowledged + unsent bytes (G6).
        timestamps: Offer RFC 7323 timestamps.
        sack: Offer and use selective acknowledgments (RFC 2018; ``tcp/sack.py``), in
            ack-on-commit mode too (``_arrive.process_text``: blocks only while the ACK
            names the hole).
        window_scaling: Offer RFC 7323 window scaling.
        initial_rto: RFC 6298 (2.1): 1 s.
        min_rto: RFC 6298 (2.4) says 1 s; Linux uses 200 ms because 1 s is far too long
            on low-latency paths. We follow Linux.
        max_rto: RFC 6298 (2.5) allows a maximum of at least 60 s; Linux uses 120 s.
        delayed_ack_timeout: RFC 9293 §3.8.6.3 requires < 0.5 s; Linux uses 40 ms.
        time_wait_timeout: 2*MSL. RFC 9293 MSL is 2 min; Linux uses 60 s in total.
        syn_retries: SYN retransmissions before giving up (Linux tcp_syn_retries = 6).
        pmtu_expires: Seconds after a path MTU reduction before the full MSS is tried
            again (RFC 1191 §6.3 and RFC 8201 §4 suggest 10 minutes; Linux
            ``net.ipv4.route.mtu_expires`` is 600).
        max_retries: Data retransmissions before TimedOut (Linux tcp_retries2 = 15).
        zero_window_probe_max: probes without any answer before giving up.
        initial_cwnd_segments: RFC 6928 initial window of 10 segments (Linux default).
        keepalive_idle: None = keepalive off (RFC 9293 §3.8.4 makes it optional).
        keepalive_interval, keepalive_probes: Linux tcp_keepalive_intvl / _probes.
        challenge_ack_limit: RFC 5961 §7 challenge ACKs per second per connection.
        gso_max: 0 = off. Otherwise the largest payload of one super-segment
            (``OutSegment.gso_size``): new data goes out in segments of up to this many
            bytes, a multiple of the MSS, which the device splits (Linux TSO/GSO). The
            stack sets it from the device's ``tx_gso_max`` (``link/base.py``).
    """

    mss: int = 1460
    recv_buffer_size: int = 4 * 1024 * 1024
    send_buffer_size: int = 4 * 1024 * 1024
    timestamps: bool = True
    sack: bool = True
    window_scaling: bool = True
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 120.0
    delayed_ack_timeout: float = 0.04
    time_wait_timeout: float = 60.0
    syn_retries: int = 6
    pmtu_expires: float = 600.0
    max_retries: int = 15
    zero_window_probe_max: int = 15
    initial_cwnd_segments: int = 10
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    challenge_ack_limit: int = 10
    gso_max: int = 0
    ack_stretch_max: int = 1024 * 1024
    """Stretch ACKs: in-order data arriving between two ``drain()`` calls (one batch of
    packets from the device) is acknowledged once, at the drain, instead of at every
    second full-sized segment (RFC 5681 §4.2 SHOULD) -- unless this many bytes are
    unacknowledged, then at once. The ACKs of one batch leave together in any case;
    fewer of them cost us and the peer less (Linux's GRO receivers send the same kind
    of stretch ACK). ``0``: one ACK per two full-sized segments."""
    manual_commit: bool = False
    """Level 2 (``Stream.commit``): received bytes stay in the store until the app
    commits them, count against the window (G6), and are replayed after a restore.
    ``False``: reading commits (level 1). Persisted in the TCB."""
    ack_on_commit: bool = False
    """ACK-on-commit (TCPR, DSN'13): the ACK we send covers only what the application
    has committed, so the peer's send buffer is the replay buffer and received bytes
    are never written to the store. The peer's FIN is acknowledged (and the state
    moves to CLOSE-WAIT & co.) once every byte before it is committed; the
    application sees EOF as soon as it has read them. Persisted in the TCB."""
    md5: bool = False
    """Every segment carries an RFC 2385 MD5 signature, which the runtime adds and
    checks (``wire/tcp_md5.py``): 20 bytes of option space less for data. Linux then
    offers no timestamps, which would leave no room for SACK blocks; the runtime's
    signed configurations do the same, and send no super-segments (each is signed)."""
    commit_wait: float = 0.02
    """ACK-on-commit: how long received bytes may wait for a commit before they are
    stored and acknowledged as in the strict mode (a *spill*), so that an application
    committing less often than the peer's window fills cannot stall the peer. Short,
    because the peer's congestion window grows only with ACKs, but longer than a busy
    level-1 reader takes to get to new bytes (at 5 ms the bench upload spilled most of
    its bytes and ran at strict speed; 20 ms: no spill, 4x faster)."""
