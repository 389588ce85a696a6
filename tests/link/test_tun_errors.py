"""``TunDevice`` configuration errors: one line that says what to do (DESIGN.md G8).

These need no privileges and create nothing (lookups only); the tests that use a real
device live in ``tests/netns/``.
"""

from __future__ import annotations

import errno

import pytest

from stcp_framework.errors import StcpConfigError
from stcp_framework.link.tun import (
    TunDevice,
    _device_error,
    create_persistent_tun,
    validate_device_name,
)


async def test_missing_device_says_to_run_net_up() -> None:
    with pytest.raises(StcpConfigError) as info:
        await TunDevice.open("stcp9nope")
    assert str(info.value) == (
        "TUN device stcp9nope not found: run `stcp net up --dev stcp9nope "
        "--addr 198.18.0.1/24` inside a private network namespace"
    )


async def test_missing_clone_device_says_how_to_get_it() -> None:
    # "lo" exists everywhere, so the failure is the missing clone device itself.
    with pytest.raises(StcpConfigError, match=r"^/nonexistent/tun is missing: load the tun module"):
        await TunDevice.open("lo", tun_path="/nonexistent/tun")


def test_create_in_missing_clone_device_is_a_config_error() -> None:
    with pytest.raises(StcpConfigError, match="is missing"):
        create_persistent_tun("stcp9nope", tun_path="/nonexistent/tun")


def test_create_refuses_an_existing_device() -> None:
    with pytest.raises(StcpConfigError, match="device lo already exists"):
        create_persistent_tun("lo")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EPERM, "needs root or CAP_NET_ADMIN"),
        (errno.EACCES, "needs root or CAP_NET_ADMIN"),
        (errno.EBUSY, "held by another process"),
        (errno.ENODEV, "not found: run `stcp net up"),
        (errno.EINVAL, "is not a TUN device"),
    ],
)
def test_ioctl_errors_map_to_advice(code: int, message: str) -> None:
    error = _device_error("stcp0", OSError(code, "x"))
    assert message in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("name", ["", "a" * 16, "has space", "a/b", "é"])
async def test_bad_device_names(name: str) -> None:
    with pytest.raises(StcpConfigError, match="bad device name"):
        validate_device_name(name)
    with pytest.raises(StcpConfigError, match="bad device name"):
        await TunDevice.open(name)
