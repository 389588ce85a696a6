"""The package's public names: what an app needs to run a durable server comes from
``stcp_framework`` itself (DESIGN.md: apps use only the public API), and the Redis and
TUN pieces load only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

import stcp_framework
from stcp_framework.link.tun import TunDevice
from stcp_framework.store.redis import RedisStore


def test_a_durable_server_s_pieces_are_public() -> None:
    assert stcp_framework.RedisStore is RedisStore
    assert stcp_framework.TunDevice is TunDevice
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        stcp_framework.Nope  # noqa: B018


def test_importing_the_package_does_not_import_redis() -> None:
    code = "import sys, stcp_framework; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
