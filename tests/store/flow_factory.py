"""Store contents written by real deltas: connections driven in memory, committed.

``established_flows`` runs each connection through a passive open (SYN, SYN-ACK, ACK)
with a real ``Connection``, optionally moves some bytes each way, and commits every
delta its drains produced -- so what a test restores is exactly what a running stack
would have left in the store after a kill -9.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from stcp_framework.stack.flows import flow_id_of
from stcp_framework.store.base import FlowDelta, Store
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.seq import Seq, seq_add
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, SYN, TcpOptions, TcpSegment

CONFIG = TcpConfig(mss=1460)
PEER_ISS = Seq(4_000_000_000)  # the peer's data crosses the 2**32 wrap
PEER_WINDOW = 65535


@dataclass
class DrivenFlow:
    """One connection driven in memory, and what the store must hold for it."""

    flow_id: str
    conn: Connection
    deltas: list[FlowDelta]
    unread: bytes  # received, not read by the app (the store's rx after the read offset)
    unacked: bytes  # sent, not acknowledged by the peer (the store's tx)


def _peer(
    local_port: int,
    remote_port: int,
    seq: Seq,
    ack: Seq,
    flags: int,
    payload: bytes = b"",
    options: TcpOptions = NO_OPTIONS,
) -> TcpSegment:
    return TcpSegment(
        src_port=remote_port,
        dst_port=local_port,
        seq=seq,
        ack=ack,
        flags=flags,
        window=PEER_WINDOW,
        urgent=0,
        options=options,
        payload=payload,
    )


def drive_established(
    local: str,
    local_port: int,
    remote: str,
    remote_port: int,
    *,
    epoch: int,
    iss: int,
    received: bytes = b"",
    read_len: int = 0,
    sent: bytes = b"",
    acked_len: int = 0,
) -> DrivenFlow:
    """A passive open, then ``received`` bytes in (``read_len`` of them read by the app)
    and ``sent`` bytes out (``acked_len`` of them acknowledged by the peer)."""
    syn = _peer(
        local_port, remote_port, PEER_ISS, Seq(0), SYN, options=TcpOptions(mss=1460, wscale=7)
    )
    conn = Connection.open_passive(syn, now=0.0, config=CONFIG, iss=Seq(iss), tsval_offset=0)
    key = (
        ipaddress.ip_address(remote).packed,
        remote_port,
        ipaddress.ip_address(local).packed,
        local_port,
    )
    flow_id = flow_id_of(key, conn.tcb.iss)
    deltas: list[FlowDelta] = []

    def drain() -> None:
        step = conn.drain()
        if step.delta is not None:
            deltas.append(FlowDelta(flow_id, epoch, step.delta))

    drain()
    peer_seq = seq_add(PEER_ISS, 1)
    our_seq = seq_add(Seq(iss), 1)
    conn.on_segment(_peer(local_port, remote_port, peer_seq, our_seq, ACK), 0.01)
    drain()
    if received:
        conn.on_segment(_peer(local_port, remote_port, peer_seq, our_seq, ACK, received), 0.02)
        drain()
        if read_len:
            assert conn.app_receive(read_len, 0.03) == received[:read_len]
            drain()
    if sent:
        assert conn.app_send(sent, 0.04) == len(sent)
        drain()
        if acked_len:
            ack = seq_add(our_seq, acked_len)
            peer_now = seq_add(peer_seq, len(received))
            conn.on_segment(_peer(local_port, remote_port, peer_now, ack, ACK), 0.05)
            drain()
    assert conn.state is TcpState.ESTABLISHED
    return DrivenFlow(flow_id, conn, deltas, received[read_len:], sent[acked_len:])


def idle_flow_endpoints(count: int) -> list[tuple[str, int, str, int]]:
    """``count`` distinct (local, local port, remote, remote port): clients of port 7 on
    198.18.0.2, 250 addresses of 198.19.x.y times as many ports as needed."""
    out = []
    for i in range(count):
        host = i % 250
        out.append(("198.18.0.2", 7, f"198.19.{i // 62500}.{host + 1}", 10000 + i // 250))
    return out


def idle_established_flows(count: int, *, epoch: int) -> list[DrivenFlow]:
    """``count`` idle established connections that exchanged a request and a reply
    (everything read and acknowledged: no buffered bytes), as after a keep-alive."""
    return [
        drive_established(
            local,
            lport,
            remote,
            rport,
            epoch=epoch,
            iss=0x1000_0000 + 7919 * i,
            received=b"GET / HTTP/1.1\r\n\r\n",
            read_len=18,
            sent=b"HTTP/1.1 204 No Content\r\n\r\n",
            acked_len=27,
        )
        for i, (local, lport, remote, rport) in enumerate(idle_flow_endpoints(count))
    ]


async def commit_all(store: Store, flows: Sequence[DrivenFlow], batch: int = 1000) -> None:
    """Commit every flow's deltas in order, ``batch`` deltas per group commit (a flow's
    deltas go in successive commits, as a running stack's rounds would send them)."""
    depth = max((len(f.deltas) for f in flows), default=0)
    for level in range(depth):
        items = [f.deltas[level] for f in flows if level < len(f.deltas)]
        for start in range(0, len(items), batch):
            await store.commit(items[start : start + batch])
