"""The commit's wire packing: payloads sent as their own buffers (not copied) must make
exactly the bytes hiredis would pack, and such commits must load back byte for byte."""

from __future__ import annotations

import itertools
import os
from typing import Any

from hiredis import pack_command
from hypothesis import given
from hypothesis import strategies as st
from store_helpers import RedisServer

from stcp_framework.store.base import FlowDelta
from stcp_framework.store.keys import CHUNK_SIZE
from stcp_framework.store.redis import _ZERO_COPY_LEN, RedisStore, _pack_evalsha
from stcp_framework.tcp.delta import RxAppend, RxTrim, StateDelta, TcbSet, TxAppend

_services = itertools.count()

_arg = st.one_of(
    st.binary(max_size=40).map(lambda b: ("big", b)),
    st.integers(min_value=-(2**63), max_value=2**64).map(lambda i: ("small", i)),
    st.text(max_size=8).map(lambda s: ("small", s)),
    st.binary(max_size=8).map(lambda b: ("small", b)),
)


@given(
    keys=st.lists(st.text(min_size=1, max_size=6), max_size=4), tagged=st.lists(_arg, max_size=12)
)
def test_split_packing_equals_hiredis_packing(
    keys: list[str], tagged: list[tuple[str, object]]
) -> None:
    args: list[Any] = [value for _, value in tagged]
    big = [i for i, (kind, _) in enumerate(tagged) if kind == "big"]
    buffers = _pack_evalsha("0" * 40, keys, args, big)
    assert b"".join(bytes(b) for b in buffers) == pack_command(
        ("EVALSHA", "0" * 40, len(keys), *keys, *args)
    )
    # every big argument goes out as the caller's own object: it was not copied
    sent = {id(b) for b in buffers}
    assert all(id(args[i]) in sent for i in big)


async def test_large_appends_sent_uncopied_load_back(redis7_server: RedisServer) -> None:
    store = RedisStore.from_url(redis7_server.url, service=f"pk{next(_services)}")
    await store.claim("f", 1)
    await store.claim("g", 1)
    rx = os.urandom(3 * CHUNK_SIZE + 17)
    tx = os.urandom(_ZERO_COPY_LEN)
    small = os.urandom(100)
    assert len(rx) >= _ZERO_COPY_LEN
    await store.commit(
        [
            FlowDelta(
                "f",
                1,
                StateDelta(
                    1,
                    (
                        RxAppend(0, rx),
                        TcbSet({"rcv_nxt": 5}),
                        TxAppend(0, tx),
                        TcbSet({"state": "x"}),
                    ),
                ),
            ),
            FlowDelta("g", 1, StateDelta(1, (RxAppend(0, small), TxAppend(0, tx)))),
            FlowDelta("f", 1, StateDelta(2, (RxAppend(len(rx), rx), RxTrim(CHUNK_SIZE + 1)))),
        ]
    )
    f = await store.load("f")
    g = await store.load("g")
    assert f is not None and g is not None
    assert (f.rx_offset, f.rx, f.tx) == (CHUNK_SIZE + 1, (rx + rx)[CHUNK_SIZE + 1 :], tx)
    assert f.tcb == {"rcv_nxt": 5, "state": "x"}
    assert (g.rx, g.tx) == (small, tx)
    await store.aclose()
