"""Flow ids are per incarnation and parse back to their 4-tuple."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stcp_framework.stack.flows import flow_id_of, flow_key_of

v4 = st.ip_addresses(v=4).map(lambda a: a.packed)
v6 = st.ip_addresses(v=6).map(lambda a: a.packed)
port = st.integers(1, 65535)


@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), port, port, st.integers(0, 2**32 - 1))
def test_round_trip(addrs: tuple[bytes, bytes], rport: int, lport: int, iss: int) -> None:
    remote, local = addrs
    key = (remote, rport, local, lport)
    assert flow_key_of(flow_id_of(key, iss)) == key


def test_a_new_incarnation_of_a_4_tuple_is_a_new_record() -> None:
    a = ipaddress.ip_address("198.18.0.1").packed
    b = ipaddress.ip_address("198.18.0.2").packed
    key = (a, 40000, b, 7)
    assert flow_id_of(key, 1) == "198.18.0.2:7-198.18.0.1:40000/00000001"
    assert flow_id_of(key, 1) != flow_id_of(key, 2)


@pytest.mark.parametrize("bad", ["nonsense", "x:1-y:2/0", "1.2.3.4:5"])
def test_garbage_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        flow_key_of(bad)
