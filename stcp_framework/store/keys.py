"""Redis key layout of the store (DESIGN.md "Store layout").

Every key of one flow carries the same hash tag, so the flow lives in one Redis Cluster
slot and one Lua script can touch all of it atomically::

    stcp:{<service>:<flow hash>}:tcb        hash: the TCB record + the flow's meta fields
    stcp:{<service>:<flow hash>}:owner      string: the owner's fencing epoch (G5)
    stcp:{<service>:<flow hash>}:app        string: the app state of the last commit (G4);
                                            absent when the state is ``None``
    stcp:{<service>:<flow hash>}:rx:<n>     string: inbound stream chunk n
    stcp:{<service>:<flow hash>}:tx:<n>     string: outbound stream chunk n
    stcp:{<service>:<flow hash>}:rx:<n>:e<epoch>, ...:tx:<n>:e<epoch>
                                            string: all of chunk n in transit, staged
                                            by the owner of <epoch> (see below)
    stcp:{<service>}:flows                  set: every flow id of the service (the index)
    stcp:{<service>}:epoch                  string: the last fencing epoch handed out
    stcp:{<service>}:secret                 string: the stacks' ISS and SYN cookie key

``<flow hash>`` is 16 hex digits of BLAKE2b over the flow id (the readable 4-tuple and
the connection's ISS, ``local:port-remote:port/ISS``: a new connection on the same ports
is a new flow), so key names have a fixed length whatever the addresses.

Chunks: chunk ``n`` covers stream offsets ``[n * CHUNK_SIZE, (n + 1) * CHUNK_SIZE)``, so
appending, reading a range and trimming are each O(chunk), and offsets never wrap (they
are unbounded stream offsets, not sequence numbers). The *first* live chunk of a stream
is allowed to start late, at the stream's ``head`` offset (kept in the TCB hash): when a
stream becomes empty every chunk is deleted and the next append starts a fresh chunk at
its own offset instead of padding it with zeros from the chunk's start. So an idle flow
holds no chunk at all, and an active one wastes at most one partly trimmed chunk per
direction. The position of stream offset ``o`` in chunk ``n`` is
``o - max(n * CHUNK_SIZE, head)``.

Staged chunks: an append that covers a whole chunk sends that chunk with a plain ``SET``
(with a ``STAGE_TTL_MS`` expiry) in the same round trip just before the commit script,
which validates the batch and then ``RENAME``s it into place (a large part of a chunk
likewise, staged on a copy of the chunk's earlier bytes: ``stage_key(...)`` plus
``:<offset>``, ``redis.py`` ``_Staged``), so the bytes never pass
through Lua (which hashes every string it is handed, byte by byte: ~1.5 ns per byte
here, more than all else a commit costs). The writer's epoch in the name keeps a stale
owner's staged bytes apart from the current owner's; the script deletes every staged
key of its batch, moved or refused; staging and script go in one ``MULTI``/``EXEC``, so
a writer killed while sending leaves none; and the expiry removes any left otherwise.

The TCB hash's meta field ``.m`` (a name no ``Tcb`` field can take: see ``codec.py``)
holds ``"<version> <rx base> <rx head> <rx end> <tx base> <tx head> <tx end> <commit
offset>"`` in decimal: the version of the last applied delta, each stream's base (trimmed
below), head (start of the first live chunk's bytes) and end, and the app's commit
offset. One field read with one pattern match is the cheapest thing a commit script can
check per flow (seven ``HMGET`` fields cost three times as much on a listpack hash).
"""

from __future__ import annotations

import hashlib

PREFIX = "stcp"
CHUNK_SIZE = 65536 - 16
"""Bytes per buffer chunk. Part of the layout: every writer of one store must agree."""

STAGE_TTL_MS = 600_000
"""Expiry of a staged chunk: only matters when its commit script never runs."""

META_FIELD = ".m"
"""The TCB hash field holding the flow's meta values (see above)."""


def flow_hash(flow_id: str) -> str:
    """16 hex digits naming a flow inside its hash tag."""
    return hashlib.blake2b(flow_id.encode(), digest_size=8).hexdigest()


def flow_tag(service: str, flow_id: str) -> str:
    """``stcp:{<service>:<flow hash>}``: the prefix of every key of one flow."""
    return f"{PREFIX}:{{{service}:{flow_hash(flow_id)}}}"


def tcb_key(tag: str) -> str:
    return f"{tag}:tcb"


def owner_key(tag: str) -> str:
    return f"{tag}:owner"


def app_key(tag: str) -> str:
    return f"{tag}:app"


def rx_chunk_key(tag: str, n: int) -> str:
    """Inbound chunk ``n`` (stream offsets ``[n * CHUNK_SIZE, (n + 1) * CHUNK_SIZE)``)."""
    return f"{tag}:rx:{n}"


def tx_chunk_key(tag: str, n: int) -> str:
    """Outbound chunk ``n``."""
    return f"{tag}:tx:{n}"


def stage_key(tag: str, stream: str, n: int, epoch: int) -> str:
    """All of chunk ``n`` of ``stream`` (``rx`` or ``tx``) staged by the owner of
    ``epoch``, for the commit script to move into place."""
    return f"{tag}:{stream}:{n}:e{epoch}"


def index_key(service: str) -> str:
    """The set of every flow id of ``service``."""
    return f"{PREFIX}:{{{service}}}:flows"


INDEX_PATTERN = f"{PREFIX}:{{*}}:flows"
"""SCAN pattern matching every service's index (for ``stcp store status``)."""


def epoch_key(service: str) -> str:
    """The counter behind ``next_epoch`` for one service's flows."""
    return f"stcp:{{{service}}}:epoch"


def secret_key(service: str) -> str:
    """The random key behind ``stack_secret`` (ISS and SYN cookies) of one service."""
    return f"stcp:{{{service}}}:secret"


def validate_service(service: str) -> str:
    """A service name is part of every key: refuse ones that would break the hash tag.

    Raises:
        ValueError: Empty, or contains ``{``, ``}`` or whitespace.
    """
    if not service or any(c in service for c in "{}") or any(c.isspace() for c in service):
        raise ValueError(
            f"bad service name {service!r}: use a non-empty name without braces or spaces"
        )
    return service
