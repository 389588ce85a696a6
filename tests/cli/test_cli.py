"""The ``stcp`` command: complete help, and one clear line for bad input or privilege."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys

import pytest

STCP = [sys.executable, "-m", "stcp_framework.cli.main"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def run(
    *args: str, prefix: list[str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *STCP, *args], capture_output=True, text=True, timeout=timeout
    )


def test_top_level_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("net", "run", "demo"):
        assert command in result.stdout
    assert "unshare -n" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["net", "--help"], ["up", "down"]),
        (["net", "up", "--help"], ["--dev", "--addr", "--addr6", "--mtu"]),
        (["net", "down", "--help"], ["--dev"]),
        (
            ["run", "--help"],
            [
                "echo",
                "discard",
                "chargen",
                "--dev",
                "--listen",
                "--store",
                "--pcap",
                "--pcap-snaplen",
                "--standby",
            ],
        ),
        (["demo", "--help"], ["--size", "root"]),
        (["store", "--help"], ["up", "down", "status"]),
    ],
)
def test_every_subcommand_has_complete_help(args: list[str], expected: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, word


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("stcp ")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stcp: error: ")
    return lines[0]


def test_run_with_missing_device_prints_one_line() -> None:
    line = one_error_line(run("run", "echo", "--dev", "stcpnope9", "--listen", "198.18.0.2:7"))
    assert "stcpnope9 not found" in line and "stcp net up" in line


def test_run_without_listen_address_prints_one_line() -> None:
    line = one_error_line(run("run", "echo", "--dev", "stcp0"))
    assert "--listen" in line


@pytest.mark.parametrize("name", ["", "a b", "a{b}"])
def test_a_bad_instance_name_is_named_as_such(name: str) -> None:
    line = one_error_line(
        run("run", "echo", "--listen", "198.18.0.2:7", "--store", "memory", "--instance", name)
    )
    assert line.startswith(f"stcp: error: --instance {name!r}: "), line


def test_a_store_dir_with_another_store_is_named() -> None:
    """(It was ignored, as `stcp flows` refused it.)"""
    line = one_error_line(
        run("run", "echo", "--listen", "198.18.0.2:7", "--store", "memory", "--store-dir", "/x")
    )
    assert line == "stcp: error: --store-dir applies to the embedded store only", line


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo checks for root first")
def test_a_demo_mtu_no_device_can_have_is_one_line() -> None:
    """(A timeline line came first.)"""
    line = one_error_line(run("demo", "--mtu", "10"))
    assert line == "stcp: error: bad MTU 10: use a value between 68 and 65535", line


def test_a_pcap_snaplen_without_a_pcap_file_is_named() -> None:
    line = one_error_line(
        run("run", "echo", "--listen", "198.18.0.2:7", "--store", "memory",
            "--pcap-snaplen", "128")
    )  # fmt: skip
    assert line == "stcp: error: --pcap-snaplen goes with --pcap FILE", line


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_a_pcap_snaplen_that_is_no_positive_number_is_a_usage_error(value: str) -> None:
    result = run("run", "echo", "--listen", "198.18.0.2:7", "--pcap", "/dev/null",
                 "--pcap-snaplen", value)  # fmt: skip
    assert result.returncode == 2
    assert f"not a positive number of bytes: {value!r}" in result.stderr


def test_bad_listen_address_is_a_usage_error() -> None:
    result = run("run", "echo", "--listen", "not-an-address")
    assert result.returncode == 2
    assert "ADDRESS[:PORT]" in result.stderr


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("198.18.0.2:7", ("198.18.0.2", 7)),
        ("198.18.0.2", ("198.18.0.2", None)),  # the service's own port
        ("[2001:db8::2]:7", ("2001:db8::2", 7)),
        ("[2001:db8::2]", ("2001:db8::2", None)),
        ("2001:db8::2", ("2001:db8::2", None)),
        ("2001:db8::2:7", ("2001:db8::2:7", None)),  # an address: a port needs brackets
    ],
)
def test_listen_endpoints_parse_and_format_back(
    text: str, endpoint: tuple[str, int | None]
) -> None:
    from stcp_framework.cli.endpoint import format_endpoint, parse_endpoint

    assert parse_endpoint(text) == endpoint
    assert parse_endpoint(format_endpoint(*endpoint)) == endpoint


@pytest.mark.parametrize("text", ["198.18.0.2:0", "198.18.0.2:x", "2001:db8::zz:7", "host:7"])
def test_bad_listen_endpoints_are_refused(text: str) -> None:
    import argparse

    from stcp_framework.cli.endpoint import parse_endpoint

    with pytest.raises(argparse.ArgumentTypeError):
        parse_endpoint(text)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_demo_without_root_prints_one_line() -> None:
    result = run("demo") if os.geteuid() != 0 else run("demo", prefix=NOBODY)
    line = one_error_line(result)
    assert "root" in line or "/dev/net/tun" in line


def test_store_cli_fsync_choices_match_the_embedded_store() -> None:
    from stcp_framework.cli.store import FSYNC_POLICIES
    from stcp_framework.store import embedded

    assert FSYNC_POLICIES == embedded.FSYNC_POLICIES


def test_a_store_error_inside_trio_s_exception_groups_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that refuses what the stack asks (not one that is away: that is waited
    out, G7) stops ``stcp run`` with one line, not a traceback of nested groups."""
    from stcp_framework.cli import main as cli_main
    from stcp_framework.cli import run as cli_run
    from stcp_framework.store.base import StoreError

    def refused(args: object) -> int:
        inner = ExceptionGroup("nursery", [StoreError("next_epoch: ERR unknown command")])
        raise ExceptionGroup("run", [inner])

    monkeypatch.setattr(cli_run, "run_command", refused)
    assert cli_main.main(["run", "echo", "--listen", "198.18.0.2:7"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "stcp: error: store: next_epoch: ERR unknown command"
    ]


def test_ctrl_c_inside_trio_s_exception_groups_is_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while ``stcp run`` starts (waiting for its store, say) comes out of trio
    wrapped in exception groups: exit 130 and nothing printed (it was a traceback)."""
    from stcp_framework.cli import main as cli_main
    from stcp_framework.cli import run as cli_run

    def interrupted(args: object) -> int:
        raise BaseExceptionGroup("run", [BaseExceptionGroup("nursery", [KeyboardInterrupt()])])

    monkeypatch.setattr(cli_run, "run_command", interrupted)
    assert cli_main.main(["run", "echo", "--listen", "198.18.0.2:7"]) == 130
    assert capsys.readouterr().err == ""


def _interfaces(*texts: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    return [ipaddress.ip_interface(text) for text in texts]


@pytest.mark.parametrize(
    ("address", "errors", "warnings"),
    [
        ("198.18.0.2", [], []),
        ("198.18.0.1", ["kernel side's own address", "e.g. 198.18.0.2"], []),
        ("198.18.0.0", [], ["network or broadcast"]),
        ("198.18.0.255", [], ["network or broadcast"]),
        ("10.1.1.1", [], ["outside the device's subnet (198.18.0.0/24)"]),
        ("2001:db8::2", [], []),
        ("2001:db8::1", ["kernel side's own address"], []),
        ("2001:db8:1::2", [], ["outside the device's subnet (fe80::/64, 2001:db8::/64)"]),
    ],
)
def test_listen_addresses_are_checked_against_the_kernel_side(
    address: str, errors: list[str], warnings: list[str]
) -> None:
    from stcp_framework.cli.endpoint import listen_problems

    kernel_side = _interfaces("198.18.0.1/24", "fe80::1/64", "2001:db8::1/64")
    got_errors, got_warnings = listen_problems([address], kernel_side)
    assert len(got_errors) == (1 if errors else 0) and len(got_warnings) == len(warnings)
    assert all(part in got_errors[0] for part in errors), got_errors  # (parts of one line)
    for expected, got in zip(warnings, got_warnings, strict=True):
        assert expected in got, got
