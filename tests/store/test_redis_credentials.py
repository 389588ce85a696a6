"""A Redis that wants credentials (``requirepass``, an ACL user): ``RedisStore`` works
with the right ones on both of its paths (the trio-driven connection and redis-py in a
worker thread), and the wrong or missing ones are a refusal (``StoreRefused``), never
an outage to wait out (``StoreUnavailable``, G7). TLS is tested against a real
``rediss://`` server in tests/netns/test_store_secured.py."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator

import pytest
import redis
from store_helpers import RedisServer, system_redis_binary

from stcp_framework.store.base import FlowDelta, StoreRefused
from stcp_framework.store.keys import CHUNK_SIZE
from stcp_framework.store.redis import RedisStore, refusal
from stcp_framework.tcp.delta import RxAppend, StateDelta, TcbSet

PASSWORD = "default-user-secret"
USER, USER_PASSWORD = "stcp-app", "app-user-secret"
_services = itertools.count()


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        system_redis_binary(),
        tmp_path_factory.mktemp("redis-auth"),
        extra_args=[
            *("--requirepass", PASSWORD),
            *("--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"),  # (ACL)
        ],
        password=PASSWORD,
    )
    server.start()
    yield server
    server.stop()


def store_as(server: RedisServer, credentials: str, trio_io: bool) -> RedisStore:
    at = f"{credentials}@" if credentials else ""
    return RedisStore.from_url(
        f"unix://{at}{server.socket}", service=f"auth{next(_services)}", trio_io=trio_io
    )


def delta(version: int, data: bytes) -> FlowDelta:
    ops = (TcbSet({"state": "ESTABLISHED"}), RxAppend(0, data))
    return FlowDelta("f", 1, StateDelta(version, ops))


PATHS = pytest.mark.parametrize("trio_io", [True, False], ids=["trio", "thread"])
# two whole chunks and a part: staged chunks, a part in ARGV (the big commit a NOAUTH
# server had cut short with "unauthenticated multibulk length" before the PING)
PAYLOAD = bytes(range(256)) * ((2 * CHUNK_SIZE + 1000) // 256)


@PATHS
@pytest.mark.parametrize("credentials", [f":{PASSWORD}", f"{USER}:{USER_PASSWORD}"])
async def test_the_right_credentials_commit_and_load(
    password_redis: RedisServer, credentials: str, trio_io: bool
) -> None:
    store = store_as(password_redis, credentials, trio_io)
    try:
        epoch = await store.next_epoch()
        await store.claim("f", 1)
        await store.commit([delta(1, PAYLOAD)])
        record = await store.load("f")
    finally:
        await store.aclose()
    assert epoch >= 1
    assert record is not None and record.rx == PAYLOAD


@PATHS
@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ("", "requires a password"),
        (":wrong-secret", "refused the credentials"),
        (f"{USER}:wrong-secret", "refused the credentials"),
        (f"nobody:{USER_PASSWORD}", "refused the credentials"),
    ],
)
async def test_wrong_or_missing_credentials_are_refused_not_waited_out(
    password_redis: RedisServer, credentials: str, says: str, trio_io: bool
) -> None:
    store = store_as(password_redis, credentials, trio_io)
    try:
        with pytest.raises(StoreRefused, match=says) as first:
            await store.next_epoch()
        with pytest.raises(StoreRefused, match=says) as second:
            await store.commit([delta(1, PAYLOAD)])
    finally:
        await store.aclose()
    for raised in (first.value, second.value):
        assert "wrong-secret" not in str(raised) and USER_PASSWORD not in str(raised)


def wrapped_verify_error(message: str) -> redis.exceptions.ConnectionError:
    """A certificate error as redis-py raises it: inside a ``ConnectionError``."""
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = message
    try:
        try:
            raise verify
        except OSError as exc:
            raise redis.exceptions.ConnectionError("Error 1 connecting to host:6380") from exc
    except redis.exceptions.ConnectionError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("message", "advice"),
    [
        ("self-signed certificate in certificate chain", "ssl_ca_certs="),
        ("unable to get local issuer certificate", "ssl_ca_certs="),
        ("Hostname mismatch, certificate is not valid for 'redis.example'.", "host"),
        ("certificate has expired", "host"),
    ],
)
def test_a_certificate_that_does_not_verify_is_a_refusal(message: str, advice: str) -> None:
    """``refusal`` finds the TLS error redis-py wraps; a CA is the advice only where a
    CA is what is missing."""
    said = refusal(wrapped_verify_error(message))
    assert said is not None and message in said and advice in said
    assert ("ssl_ca_certs=" in said) == (advice == "ssl_ca_certs=")


def test_unreachable_or_slow_is_no_refusal() -> None:
    assert refusal(redis.exceptions.ConnectionError("Connection refused")) is None
    assert refusal(redis.exceptions.TimeoutError("Timeout reading from socket")) is None


async def test_credentials_from_a_provider_keep_the_thread_path(
    password_redis: RedisServer,
) -> None:
    """redis-py asks a ``credential_provider`` for them; the trio-driven connection
    would not, and would connect without any (``RespPool.for_client``)."""
    provider = redis.UsernamePasswordCredentialProvider(USER, USER_PASSWORD)
    client = redis.Redis(unix_socket_path=str(password_redis.socket), credential_provider=provider)
    store = RedisStore(client, service=f"auth{next(_services)}")
    try:
        await store.claim("f", 1)
        await store.commit([delta(1, PAYLOAD)])
        record = await store.load("f")
    finally:
        await store.aclose()
    assert record is not None and record.rx == PAYLOAD


async def test_a_database_redis_does_not_have_is_a_refusal(redis7_server: RedisServer) -> None:
    """``/99`` (``?db=99`` on a socket): no retry cures it, so it is no outage to wait
    out; it said "store: next_epoch: DB index is out of range" and exited 1."""
    store = RedisStore.from_url(f"{redis7_server.url}?db=99", service="db99")
    try:
        with pytest.raises(StoreRefused, match="no such database"):
            await store.next_epoch()
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/abc", "bad database in the store URL: 'abc' is not a number"),
        ("rediss://127.0.0.1:6390?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs=/no/such/ca.pem"),
        ("redis://127.0.0.1?wait_replicas=x", "bad wait_replicas in the store URL"),
    ],
)
def test_store_url_mistakes_are_named_at_once(url: str, message: str) -> None:
    """(A missing CA file was retried for ever as an unreachable Redis, and a database
    that is no number silently meant database 0.)"""
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        RedisStore.from_url(url)
