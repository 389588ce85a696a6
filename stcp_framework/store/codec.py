"""Encoding of TCB values in the Redis TCB hash (see ``keys.py``).

A TCB record (``Tcb.to_record`` and ``TcbSet.fields``) holds plain ``int``, ``bool`` and
``str`` values; every value is stored as its own hash field so a ``TcbSet`` is one
``HSET`` of just the changed fields. Values carry a one-character type mark so they load
back with their type:

    int     decimal digits, as is (``"1460"``, ``"-1"``): Redis keeps small hashes as
            listpacks and stores integer-looking strings as integers, which keeps an idle
            flow small
    bool    ``"?1"`` / ``"?0"``
    str     ``"'"`` + the text (``"'ESTABLISHED"``)
    None    ``"~"``
    float   ``"f"`` + ``repr`` (not used by ``Tcb`` today; accepted so a future field
            cannot break the store)

Field names: the ``Tcb`` attribute names are stored as the short aliases of ``ALIASES``
(``snd_una`` -> ``su``): an idle flow must stay under 1 KB of Redis memory, and the names
were a quarter of it. Any other name is stored as ``+`` + the name, so no future field can
collide with an alias; ``Tcb.from_record`` decides about fields of another schema (it
refuses newer ones), not the codec. Names starting with ``.`` are the store's own meta
fields (``keys.py``) and are refused here. The aliases are part of the store layout:
never reuse or change one.
"""

from __future__ import annotations

from collections.abc import Mapping

ALIASES: dict[str, str] = {
    "state": "st",
    "iss": "is",
    "irs": "ir",
    "snd_una": "su",
    "snd_nxt": "sn",
    "snd_wnd": "sw",
    "snd_wl1": "s1",
    "snd_wl2": "s2",
    "max_window": "mw",
    "rcv_nxt": "rn",
    "rcv_wnd": "rw",
    "rcv_wup": "ru",
    "mss": "ms",
    "snd_wscale": "ss",
    "rcv_wscale": "rs",
    "timestamps": "ts",
    "tsval_offset": "to",
    "ts_recent": "tr",
    "sack_permitted": "sp",
    "fin_sent": "fs",
    "fin_received": "fr",
    "snd_una_offset": "uo",
    "rcv_nxt_offset": "no",
    "read_offset": "ro",
    "commit_offset": "co",
    "app_closed": "ac",
    "manual_commit": "mc",
    "ack_on_commit": "ak",
    "tx_refs": "xr",
    "tx_ref_base": "xb",
    "active_open": "ao",
    "schema": "sc",
}
"""Stored name of each known TCB field (a stable part of the layout)."""

_ENCODED_NAMES: dict[str, bytes] = {name: alias.encode() for name, alias in ALIASES.items()}
_DECODED_NAMES: dict[bytes, str] = {alias.encode(): name for name, alias in ALIASES.items()}


def encode_name(name: str) -> bytes:
    """The stored hash field of TCB field ``name``.

    Raises:
        ValueError: ``name`` starts with ``.`` (reserved for the store's meta fields).
    """
    alias = _ENCODED_NAMES.get(name)
    if alias is not None:
        return alias
    if name.startswith("."):
        raise ValueError(f"TCB field name {name!r} is reserved (starts with '.')")
    return b"+" + name.encode()


def decode_name(raw: bytes) -> str:
    """Inverse of ``encode_name``.

    Raises:
        ValueError: Neither an alias nor a ``+`` name.
    """
    name = _DECODED_NAMES.get(raw)
    if name is not None:
        return name
    if raw[:1] == b"+":
        return raw[1:].decode()
    raise ValueError(f"unknown TCB hash field {raw!r}")


def encode_value(value: object) -> bytes:
    """One TCB value as stored.

    Raises:
        TypeError: Not an int, bool, str, float or None.
    """
    if value is True:
        return b"?1"
    if value is False:
        return b"?0"
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str):
        return b"'" + value.encode()
    if value is None:
        return b"~"
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    raise TypeError(f"TCB values must be int, bool or str, not {type(value).__name__}")


def decode_value(raw: bytes) -> object:
    """Inverse of ``encode_value``.

    Raises:
        ValueError: Not something ``encode_value`` writes.
    """
    mark = raw[:1]
    if mark == b"'":
        return raw[1:].decode()
    if mark == b"?":
        if raw == b"?1":
            return True
        if raw == b"?0":
            return False
    elif mark == b"~" and len(raw) == 1:
        return None
    elif mark == b"f":
        return float(raw[1:])
    else:
        return int(raw)
    raise ValueError(f"undecodable TCB value {raw!r}")


def encode_fields(fields: Mapping[str, object]) -> list[bytes]:
    """``TcbSet.fields`` as a flat ``[name, value, name, value, ...]`` list.

    Raises:
        ValueError: A name starts with ``.`` (reserved for the store's meta fields).
        TypeError: A value of another type (see ``encode_value``).
    """
    out: list[bytes] = []
    for name, value in fields.items():
        out.append(encode_name(name))
        out.append(encode_value(value))
    return out


def decode_tcb(raw: Mapping[bytes, bytes]) -> tuple[dict[str, object], bytes | None]:
    """Split a loaded TCB hash into (record fields, the raw ``.m`` meta field or None)."""
    record: dict[str, object] = {}
    meta: bytes | None = None
    for name, value in raw.items():
        if name[:1] == b".":
            if name == b".m":
                meta = value
        else:
            record[decode_name(name)] = decode_value(value)
    return record, meta
