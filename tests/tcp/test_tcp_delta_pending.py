"""``Connection.delta_pending``: whether the next ``drain()`` returns a delta. The stack
waits for the version that holds an app call's changes (``Runtime.durable_target``):
the next one exactly when this says so, never one that no drain will number."""

from __future__ import annotations

from tcp_helpers import REMOTE_SEQ, conn_established, r, sq


def test_an_app_call_leaves_a_delta_pending_until_the_drain_numbers_it() -> None:
    conn = conn_established()
    assert not conn.delta_pending()
    before = conn.version
    conn.app_send(b"answer", 1.0)
    assert conn.delta_pending()
    step = conn.drain()
    assert step.delta is not None and step.delta.version == before + 1 == conn.version
    assert not conn.delta_pending()


def test_a_segment_with_nothing_to_store_leaves_no_delta_pending() -> None:
    """The same pure ACK twice: the first moves SND.WL1 (stored), the second changes
    nothing, so a task that waits for the app's last change must not wait for a version
    after it (a relay's transaction once did, and hung: ``Runtime.durable_target``)."""
    conn = conn_established()
    conn.on_segment(r(payload=b"request"), 1.0)
    conn.app_receive(100, 1.0)
    conn.drain()
    ack = r(seq=sq(REMOTE_SEQ, 7))
    conn.on_segment(ack, 2.0)
    assert conn.delta_pending()
    conn.drain()
    version = conn.version
    conn.on_segment(ack, 3.0)
    assert not conn.delta_pending()
    step = conn.drain()
    assert step.delta is None and step.segments == () and conn.version == version
