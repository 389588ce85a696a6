"""Restore this instance's flows from the store on start (DESIGN.md "Recovery").

Each stored flow is claimed with the runtime's new epoch (so a zombie of the previous
incarnation is fenced off, G5), loaded, rebuilt with ``Connection.restore`` and put in
the flow table before the device is read. Its first drain is the "kick" -- an ACK with
the current window and a retransmission from ``snd_una`` -- so the peer resumes at once
instead of waiting for its retransmission timer. Streams the application still held are
offered to the listener of their port with ``recovered=True``.

Flows are claimed and loaded ``RESTORE_BATCH`` at a time with the store's batched calls
(``claim_many``, ``load_many``: a few round trips per thousand flows instead of three
per flow), then rebuilt one by one (``_restore_one``).
"""

from __future__ import annotations

import enum
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..store.base import FlowRecord, StoreError
from ..tcp.machine import Connection
from ..tcp.state import TcpState
from ..tcp.tcb import Tcb
from .flows import Flow, FlowKey, flow_key_of, holds_uncommitted
from .sources import SourceError

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger("stcp.stack")

RESTORE_BATCH = 1000
"""Flows claimed, loaded and rebuilt at a time (bounds the loaded records held at once)."""

# States whose stream the application may still hold (it had not called close()).
# TIME-WAIT too: both FINs are through, but bytes read and not committed are replayed
# (G4), and a relay still has to pass the end of the stream on (Stack.reattach).
_APP_STATES = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
        TcpState.TIME_WAIT,
    }
)


class _Outcome(enum.Enum):
    RESTORED = "restored"
    FORGET = "forget"  # nothing to restore: remove the record
    KEEP = "keep"  # unreadable here (e.g. a newer schema): leave the record alone


async def restore_flows(runtime: Runtime) -> int:
    """Claim, load and rebuild every flow of the store (a ``RedisStore``'s service);
    returns how many."""
    store = runtime.store
    keys: dict[str, FlowKey] = {}
    for flow_id in await store.list_flows():
        try:
            keys[flow_id] = flow_key_of(flow_id)
        except ValueError:
            logger.warning("ignoring a store record that is not a flow: %r", flow_id)
    flow_ids = list(keys)
    restored = 0
    with _collector_paused():
        for start in range(0, len(flow_ids), RESTORE_BATCH):
            # Fenced flows are left out: a newer instance owns them.
            claimed = await store.claim_many(flow_ids[start : start + RESTORE_BATCH], runtime.epoch)
            records = await store.load_many(claimed)
            stale: list[str] = []
            for flow_id in claimed:
                outcome = _restore_one(runtime, flow_id, keys[flow_id], records.get(flow_id))
                if outcome is _Outcome.RESTORED:
                    restored += 1
                elif outcome is _Outcome.FORGET:
                    stale.append(flow_id)
            for flow_id in stale:
                await _forget(runtime, flow_id)
    if restored:
        logger.info("%s: restored %d flows (epoch %d)", runtime.instance, restored, runtime.epoch)
    return restored


def _restore_one(
    runtime: Runtime, flow_id: str, key: FlowKey, record: FlowRecord | None
) -> _Outcome:
    """Rebuild one claimed flow and put it in the flow table."""
    if record is None or not record.tcb:
        return _Outcome.FORGET  # unknown, claim-only, or its buffers are lost
    try:
        tcb = Tcb.from_record(record.tcb)
    except ValueError as exc:
        logger.warning("[%s] cannot restore: %s", flow_id, exc)
        return _Outcome.KEEP
    if key[2] not in runtime.local_addresses:
        return _Outcome.FORGET
    if tcb.state is TcpState.SYN_SENT:
        # The app's connect() died with the process before it returned, so no app
        # knows this flow (reattach takes a flow_id an app stored); restored, it would
        # complete its handshake for nobody. Forgotten: a SYN-ACK the peer sends meets
        # a RST (RFC 9293 §3.10.7.1), which ends its half of it.
        return _Outcome.FORGET
    closed = tcb.state is TcpState.CLOSED
    if closed and not (tcb.manual_commit and not tcb.app_closed and tcb.fin_received):
        # Only one that ended with the peer's FIN is kept for replay (Runtime.
        # _remove_flow): its bytes then EOF are the whole stream. One that ended
        # otherwise -- reset, timed out -- and left a record (its forget never got
        # through) is no stream to replay: replayed, it would end in a clean EOF.
        return _Outcome.FORGET
    try:
        conn = Connection.restore(
            tcb,
            rx=record.rx,
            rx_offset=record.rx_offset,
            tx=record.tx,
            tx_offset=record.tx_offset,
            now=runtime.now(),
            config=runtime.config_for(key),
            version=record.version,
            regenerate=runtime.sources.read,
            # The crashed process may have acknowledged bytes the record lacks (async:
            # its last commit did not hold them; any mode: the store went back to an
            # older state meanwhile); the connection resets itself once the peer
            # proves it, instead of waiting for bytes the peer has discarded.
            acked_may_be_lost=True,
            window_tests=runtime.durability == "async",
        )
    except (ValueError, SourceError) as exc:
        # Bytes the peer has not acknowledged cannot be produced again: the connection
        # cannot continue byte-exact (G3). Reset now -- a peer that has acknowledged
        # everything sends nothing more that could meet a RST -- and forgotten.
        logger.warning("[%s] cannot restore, resetting it: %s", flow_id, exc)
        if tcb.state.synchronized():
            runtime.send_reset_at(key, tcb.snd_nxt)
        return _Outcome.FORGET
    flow = Flow(key=key, flow_id=flow_id, conn=conn, recovered=True, app_state=record.app_state)
    flow.durable_version = record.version
    if closed:
        # Kept for its app's commits (Runtime._remove_flow, G4): a stream to replay,
        # at EOF after the bytes not committed; no connection (the machine sends
        # nothing from CLOSED), so not in the flow table.
        if not holds_uncommitted(flow):
            return _Outcome.FORGET
        flow.closed = flow.kept = flow.connected = True
        runtime.adopt(flow, offer=True)
        return _Outcome.RESTORED
    flow.connected = tcb.state.synchronized()
    if tcb.state is TcpState.SYN_RECEIVED:
        flow.listener_port = key[3]  # accepted once the handshake completes
    runtime.flows[key] = flow
    runtime.adopt(flow, offer=tcb.state in _APP_STATES and not tcb.app_closed)
    return _Outcome.RESTORED


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while the flows are rebuilt.

    Each restored connection is a few dozen objects that all survive. With the collector
    on, every few hundred allocations start a collection, and the older generations --
    the flows restored so far -- are rescanned again and again: that was 0.8 s of the
    1.2 s it took to rebuild 10,000 flows. None of it is garbage, so waiting loses
    nothing; the previous setting is put back afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What was restored lives as long as its connection: move it out of the
        # collector's generations for good, so the first full collection after a large
        # restore does not rescan it (gc.freeze, Python 3.7+).
        gc.freeze()
        if enabled:
            gc.enable()


async def _forget(runtime: Runtime, flow_id: str) -> None:
    try:
        await runtime.store.forget(flow_id, runtime.epoch)
    except StoreError as exc:
        logger.info("[%s] could not forget: %s", flow_id, exc)
