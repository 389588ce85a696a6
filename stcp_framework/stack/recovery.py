"""Restore this instance's flows from the store on start (DESIGN.md "Recovery").

Each stored flow is claimed with the runtime's new epoch (so a zombie of the previous
incarnation is fenced off, G5), loaded, rebuilt with ``Connection.restore`` and put in
the flow table before the device is read. Its first drain is the "kick" -- an ACK with
the current window and a retransmission from ``snd_una`` -- so the peer resumes at once
instead of waiting for its retransmission timer. Streams the application still held are
offered to the listener of their port with ``recovered=True``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..store.base import FencedOut, StoreError
from ..tcp.machine import Connection
from ..tcp.state import TcpState
from ..tcp.tcb import Tcb
from .flows import Flow, flow_key_of

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger("stcp.stack")

# States whose stream the application may still hold (it had not called close()).
_APP_STATES = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
    }
)


async def restore_flows(runtime: Runtime) -> int:
    """Claim, load and rebuild every flow of ``runtime.instance``; returns how many."""
    store = runtime.store
    restored = 0
    for flow_id in await store.list_flows():
        try:
            key = flow_key_of(flow_id)
        except ValueError:
            logger.warning("ignoring a store record that is not a flow: %r", flow_id)
            continue
        try:
            await store.claim(flow_id, runtime.epoch)
        except FencedOut:
            continue  # a newer instance owns it
        record = await store.load(flow_id)
        if record is None or not record.tcb:
            await _forget(runtime, flow_id)
            continue
        try:
            tcb = Tcb.from_record(record.tcb)
        except ValueError as exc:
            logger.warning("[%s] cannot restore: %s", flow_id, exc)
            continue
        if tcb.state is TcpState.CLOSED or key[2] not in runtime.local_addresses:
            await _forget(runtime, flow_id)
            continue
        conn = Connection.restore(
            tcb,
            rx=record.rx,
            rx_offset=record.rx_offset,
            tx=record.tx,
            tx_offset=record.tx_offset,
            now=trio.current_time(),
            config=runtime.config_for(key),
            version=record.version,
        )
        flow = Flow(key=key, flow_id=flow_id, conn=conn, recovered=True)
        flow.durable_version = record.version
        flow.connected = tcb.state.synchronized()
        if tcb.state is TcpState.SYN_RECEIVED:
            flow.listener_port = key[3]  # accepted once the handshake completes
        runtime.flows[key] = flow
        runtime.adopt(flow, offer=tcb.state in _APP_STATES and not tcb.app_closed)
        restored += 1
    if restored:
        logger.info("restored %d flows (epoch %d)", restored, runtime.epoch)
    return restored


async def _forget(runtime: Runtime, flow_id: str) -> None:
    try:
        await runtime.store.forget(flow_id, runtime.epoch)
    except StoreError as exc:
        logger.info("[%s] could not forget: %s", flow_id, exc)
