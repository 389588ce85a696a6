"""``stcp flows``: the connections a store holds, like ``ss -ti`` for stateless servers.

Reads the store only (it claims nothing, so it never disturbs a running server): each
flow's TCB record, owner epoch and buffer sizes, one batched read per few hundred flows
(``RedisStore.describe_many_sync``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StcpConfigError

if TYPE_CHECKING:
    from ..store.base import FlowInfo
    from ..store.redis import RedisStore

__all__ = ["FlowRow", "add_flows_parser", "flows_command"]

_SEQ_MOD = 1 << 32
_COLUMNS = (
    ("instance", "Instance", "<"),
    ("state", "State", "<"),
    ("local", "Local", "<"),
    ("peer", "Peer", "<"),
    ("epoch", "Epoch", ">"),
    ("read_offset", "Read", ">"),
    ("commit_offset", "Commit", ">"),
    ("acked_offset", "Acked", ">"),
    ("sent_offset", "Sent", ">"),
    ("rx_buffered", "Rx-Q", ">"),
    ("tx_buffered", "Tx-Q", ">"),
    ("tx_from_sources", "Tx-Src", ">"),
    ("acks", "Acks", "<"),
    ("app_state_size", "App", ">"),
)


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One flow as ``stcp flows`` shows it (``None``: the store does not say; ``state``
    is ``None`` for a claim-only record, and every field after it too once the record
    vanished between listing and reading).

    Offsets are stream offsets (``tcp/tcb.py``): ``recv_offset`` (``rcv_nxt``) is the end
    of what was received, ``read_offset`` what the app read, ``commit_offset`` what it
    committed; ``acked_offset`` (``snd_una``) and ``sent_offset`` (``snd_nxt``) are the
    outbound ones, as stored: a peer's pure ACK is recorded with the flow's next round
    or timer, so ``acked_offset`` may trail the live one by an RTO (and ``tx_buffered``
    still count those bytes). ``rx_buffered``/``tx_buffered`` are the bytes the store holds;
    ``tx_from_sources`` the unacknowledged outbound bytes a restart re-reads from their
    sources instead (``Stream.send_from``). ``acks``: ``"store"`` (ACKs cover stored
    bytes: strict or async durability) or ``"commit"`` (ack-on-commit).
    """

    instance: str
    flow_id: str
    local: str
    peer: str
    state: str | None
    epoch: int | None
    version: int | None
    recv_offset: int | None
    read_offset: int | None
    commit_offset: int | None
    app_commit_offset: int | None
    acked_offset: int | None
    sent_offset: int | None
    rx_buffered: int | None
    tx_buffered: int | None
    tx_from_sources: int | None
    acks: str | None
    app_state_size: int | None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _endpoints(flow_id: str) -> tuple[str, str, tuple[Any, ...]]:
    """(local, peer, sort key) of a flow id (``stack.flows.flow_id_of``)."""
    from ..stack.flows import flow_key_of

    try:
        remote, rport, local, lport = flow_key_of(flow_id)
    except ValueError:
        return flow_id, "-", (1, flow_id)
    ends = flow_id.partition("/")[0].partition("-")
    return ends[0], ends[2], (0, len(local), local, lport, len(remote), remote, rport, flow_id)


def _from_sources(tcb: dict[str, Any], acked: int | None) -> int | None:
    """Unacknowledged bytes of the flow's regenerable extents (``tcp/txmap.py``), as
    recorded: a reservation counts (a restart would queue those bytes again)."""
    from ..tcp.txmap import TxMap

    try:
        txmap = TxMap.decode(str(tcb.get("tx_refs") or ""), 0)
    except ValueError:
        return None
    below = max(acked or 0, 0)
    return sum(max(0, r.end - max(r.start, below)) for r in txmap.refs)


def make_row(instance: str, flow_id: str, info: FlowInfo | None) -> FlowRow:
    """A table row from what the store described (``info`` None: the record vanished)."""
    local, peer, _ = _endpoints(flow_id)
    if info is None:
        return FlowRow(instance, flow_id, local, peer, *([None] * 14))
    tcb = info.tcb
    state = tcb.get("state")
    snd_una, snd_nxt = _int(tcb.get("snd_una")), _int(tcb.get("snd_nxt"))
    acked = _int(tcb.get("snd_una_offset"))
    sent = None
    if acked is not None and snd_una is not None and snd_nxt is not None:
        sent = acked + (snd_nxt - snd_una) % _SEQ_MOD
    return FlowRow(
        instance=instance,
        flow_id=flow_id,
        local=local,
        peer=peer,
        state=state if isinstance(state, str) else None,
        epoch=info.epoch,
        version=info.version,
        recv_offset=_int(tcb.get("rcv_nxt_offset")),
        read_offset=_int(tcb.get("read_offset")),
        commit_offset=_int(tcb.get("commit_offset")),
        app_commit_offset=info.commit_offset,
        acked_offset=acked,
        sent_offset=sent,
        rx_buffered=info.rx_len,
        tx_buffered=info.tx_len,
        tx_from_sources=_from_sources(tcb, acked),
        acks="commit" if tcb.get("ack_on_commit") else "store",
        app_state_size=info.app_state_len,
    )


def _redact(url: str) -> str:
    """The URL without its password (``redis://:secret@host`` -> ``redis://:***@host``)."""
    url = re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def _open(args: argparse.Namespace) -> tuple[RedisStore, str]:
    """Connect to the store of ``--store``; a one-line error when it does not answer."""
    from redis.exceptions import RedisError

    from ..store import embedded
    from ..store.redis import RedisStore, refusal

    if args.store == "embedded":
        url = embedded.socket_url(args.store_dir)
        up = "`stcp store up" + (f" --dir {args.store_dir}`" if args.store_dir else "`")
        down = f"store at {url} is not running: start it with {up}"
    elif args.store == "memory":
        raise StcpConfigError(
            "--store memory: a memory store lives inside its server process; "
            "give the store's URL or `embedded`"
        )
    else:
        if args.store_dir:
            raise StcpConfigError("--store-dir applies to the embedded store only")
        url = args.store
        down = f"store at {_redact(url)} is not reachable"
    try:
        store = RedisStore.from_url(url, service="default", socket_timeout=5.0)
    except ValueError as exc:
        raise StcpConfigError(f"--store {args.store!r}: {exc}") from exc
    try:
        store.client.ping()
    except (RedisError, OSError) as exc:
        store.client.close()
        refused = refusal(exc)
        if refused is not None:
            raise StcpConfigError(f"store at {_redact(url)}: {refused}") from exc
        if args.store == "embedded":
            raise StcpConfigError(down) from exc
        raise StcpConfigError(f"{down}: {exc}") from exc
    return store, url


def _instances(store: RedisStore) -> list[str]:
    """Every service with a flow index in the store (``keys.INDEX_PATTERN``)."""
    from ..store import keys as K

    names = set()
    for raw in store.client.scan_iter(match=K.INDEX_PATTERN, count=1000):
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        names.add(text[len(K.PREFIX) + 2 : -len("}:flows")])
    return sorted(names)


def _with_workers(store: RedisStore, instance: str) -> list[str]:
    """``instance`` and the instances of its workers (``stcp run --workers``: NAME.wI)."""
    workers = [
        name
        for name in _instances(store)
        if name.startswith(f"{instance}.w") and name[len(instance) + 2 :].isdigit()
    ]
    return [instance, *sorted(workers, key=lambda name: int(name[len(instance) + 2 :]))]


def collect_rows(store: RedisStore, instances: list[str]) -> list[FlowRow]:
    """Every flow of ``instances``, sorted by instance, local then peer address:port."""
    from ..store.redis import RedisStore

    rows: list[tuple[tuple[Any, ...], FlowRow]] = []
    for instance in instances:
        view = RedisStore(store.client, service=instance)
        flow_ids = view.list_flows_sync()
        for flow_id, info in view.describe_many_sync(flow_ids).items():
            rows.append(((instance, _endpoints(flow_id)[2]), make_row(instance, flow_id, info)))
    rows.sort(key=lambda item: item[0])
    return [row for _, row in rows]


def _state(row: FlowRow) -> str:
    if row.state is not None:
        return row.state
    return "(gone)" if row.epoch is None else "(no TCB)"


def _size(n: int) -> str:
    return (
        f"{n} B"
        if n < 10_000
        else f"{n / 1024:.0f} KiB"
        if n < 10_000_000
        else (f"{n / 1048576:.0f} MiB")
    )


def summary(rows: list[FlowRow], instances: list[str]) -> str:
    """``3 flows (2 ESTABLISHED, 1 CLOSE-WAIT); buffered: 10 B received, ...``."""
    states = Counter(_state(row) for row in rows)
    parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    rx = sum(row.rx_buffered or 0 for row in rows)
    tx = sum(row.tx_buffered or 0 for row in rows)
    app = sum(row.app_state_size or 0 for row in rows)
    if not instances:
        where = "no instance"  # (--all on a store that holds none)
    elif len(instances) == 1:
        where = "instance " + instances[0]
    elif all(name.startswith(instances[0] + ".w") for name in instances[1:]):
        workers = len(instances) - 1
        where = f"instance {instances[0]} and its {workers} worker{'s' * (workers > 1)}"
    else:
        where = f"{len(instances)} instances"
    count = f"{len(rows)} flow{'' if len(rows) == 1 else 's'}"
    return (
        f"{count} ({where}{'; ' + parts if parts else ''}); buffered: {_size(rx)} "
        f"received, {_size(tx)} to send, {_size(app)} app state"
    )


def table(rows: list[FlowRow], *, with_instance: bool) -> list[str]:
    """Plain-text columns, each as wide as its widest cell."""
    columns = [c for c in _COLUMNS if with_instance or c[0] != "instance"]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        values = [_state(row) if name == "state" else getattr(row, name) for name, _, _ in columns]
        cells.append(["-" if v is None else str(v) for v in values])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return [
        "  ".join(
            f"{text:{align}{width}}"
            for text, (_, _, align), width in zip(line, columns, widths, strict=True)
        ).rstrip()
        for line in cells
    ]


def flows_command(args: argparse.Namespace) -> int:
    from ..store.base import StoreError

    store, url = _open(args)
    try:
        instances = _instances(store) if args.all else _with_workers(store, args.instance)
        rows = collect_rows(store, instances)
    except StoreError as exc:
        raise StcpConfigError(f"store at {_redact(url)}: {exc}") from exc
    finally:
        store.client.close()
    if args.json:
        totals = {
            "flows": len(rows),
            "rx_buffered": sum(r.rx_buffered or 0 for r in rows),
            "tx_buffered": sum(r.tx_buffered or 0 for r in rows),
            "app_state_size": sum(r.app_state_size or 0 for r in rows),
        }
        print(
            json.dumps(
                {
                    "store": _redact(url),
                    "instances": instances,
                    "flows": [asdict(r) for r in rows],
                    "totals": totals,
                },
                indent=1,
            )
        )
        return 0
    if rows:
        print("\n".join(table(rows, with_instance=len(instances) > 1)))
    print(summary(rows, instances))
    return 0


def _instance_name(text: str) -> str:
    from ..store.keys import validate_service

    try:
        return validate_service(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_flows_parser(subparsers: Any) -> None:
    """Register ``stcp flows`` on ``stcp``'s subparsers (sets ``func``)."""
    p = subparsers.add_parser(
        "flows",
        help="list the connections the state store holds (like ss -ti)",
        description=(
            "List the connections whose state the store holds, one line each: TCP state, "
            "local and peer address:port, the owner's fencing epoch, stream offsets (Read "
            "and Commit: inbound bytes the app read and committed; Acked: outbound bytes "
            "the peer acknowledged, snd_una; Sent: snd_nxt), the bytes buffered in the "
            "store (Rx-Q received, Tx-Q to send), the bytes to send that a restart re-reads "
            "from their source instead (Tx-Src, Stream.send_from), what ACKs cover (Acks: "
            "store, or commit with --durability ack-on-commit) and the size of the app "
            "state, then a "
            "summary line. Reads only: a running server is not disturbed. Exits 2 with "
            "one line if the store does not answer."
        ),
    )
    p.add_argument(
        "--store",
        default="embedded",
        metavar="STORE",
        help="`embedded` (default: the store of `stcp store up`; never started by this "
        "command) or a URL (redis://[:password@]host:port/db, rediss://..., "
        "unix:///path/redis.sock)",
    )
    p.add_argument(
        "--store-dir",
        metavar="DIR",
        help="directory of the embedded store (default: as `stcp store up`)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--instance",
        default="default",
        type=_instance_name,
        help="the instance (`stcp run --instance`) whose flows to list, with those of its "
        "workers (`--workers`: NAME.w0, NAME.w1, ...) (default: default)",
    )
    which.add_argument("--all", action="store_true", help="list the flows of every instance")
    p.add_argument("--json", action="store_true", help="print JSON (every field) instead")
    p.set_defaults(func=flows_command)
