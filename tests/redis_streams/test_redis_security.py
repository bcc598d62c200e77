"""TLS and logins for real: a private redis-server with a ``tls-port``, a CA, server and client
certificates this test makes with the ``openssl`` command line (client certificates required),
and one with an ACL user; a canary password that must appear nowhere."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from faults.redishelp import RedisServer, TlsFiles, make_tls_files, run, unique

import romeways
from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector
from romeways.connectors.redis._client import TlsConnection

pytestmark = pytest.mark.skipif(not RedisServer.available(), reason="redis-server not installed")

CANARY = "Canary-Pw-4be1f2d9"
USER = "svc-billing"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[str]:
    with RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=tls_files) as server:
        yield server.url


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(tmp_path_factory.mktemp("redis-acl"), users={USER: CANARY}) as server:
        yield server.url


def _connector(url: str, **connector_options: Any) -> RedisQueueConnector:
    stream = unique("sec")
    options: dict[str, Any] = {"startup_timeout": 20.0, **connector_options}
    return RedisQueueConnector(
        connector_config=RedisConnectorConfig(connector_name="sec", url=url, **options),
        queue_name="q",
        config=RedisQueueConfig(connector_name="sec", stream=stream, group="g", frequency=0.2),
    )


async def _round_trip(connector: RedisQueueConnector) -> list[bytes]:
    """Start, publish, fetch, ack, close: what a worker and a producer do."""
    await connector.on_start()
    try:
        await connector.publish(b"over-tls", key=b"k")
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = list(await connector.get_messages(10))
        await connector.ack(range(len(got)))
        return got
    finally:
        await connector.close()


async def _start_fails(connector: RedisQueueConnector) -> tuple[float, romeways.ConnectorError]:
    started = time.monotonic()
    with pytest.raises(romeways.ConnectorError) as caught:
        await connector.on_start()
    return time.monotonic() - started, caught.value


def test_tls_with_a_client_certificate_consumes_and_publishes(
    tls_server: str, tls_files: TlsFiles
) -> None:
    """The handshake uses the kit's tls_context (server checked against our CA and its host
    name, the client certificate presented: the server requires one), with a plain and with an
    encrypted key."""
    plain = _connector(
        tls_server,
        ssl_cafile=str(tls_files.ca),
        ssl_certfile=str(tls_files.client_cert),
        ssl_keyfile=str(tls_files.client_key),
    )
    assert run(_round_trip(plain)) == [b"over-tls"]
    encrypted = _connector(
        tls_server,
        ssl_cafile=str(tls_files.ca),
        ssl_certfile=str(tls_files.client_cert),
        ssl_keyfile=str(tls_files.client_key_encrypted),
        ssl_password=tls_files.key_password,
    )
    assert run(_round_trip(encrypted)) == [b"over-tls"]
    assert tls_files.key_password not in repr(encrypted) + repr(encrypted.connector_config)

    async def connection_class() -> type[Any]:
        await plain.on_start()
        try:
            client: Any = plain._client  # pyright: ignore[reportPrivateUsage]
            found: type[Any] = client.connection_pool.connection_class
            return found
        finally:
            await plain.close()

    assert run(connection_class()) is TlsConnection


def test_a_wrong_ca_fails_at_once_with_a_clear_error(tls_server: str, tls_files: TlsFiles) -> None:
    """Trusting another CA: on_start fails in well under a second (startup_timeout 20 s), saying
    the server's certificate is not trusted; not retried."""
    connector = _connector(
        tls_server,
        ssl_cafile=str(tls_files.other_ca),
        ssl_certfile=str(tls_files.client_cert),
        ssl_keyfile=str(tls_files.client_key),
    )
    took, error = run(_start_fails(connector))
    assert took < 2.0, f"took {took:.1f}s"
    assert "TLS certificate is not trusted (check ssl_cafile)" in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) and "not retried" in str(error)


def test_no_client_certificate_and_bad_tls_files_fail_at_once(
    tls_server: str, tls_files: TlsFiles
) -> None:
    took, error = run(_start_fails(_connector(tls_server, ssl_cafile=str(tls_files.ca))))
    assert took < 2.0 and "refused the client's TLS certificate" in str(error), str(error)
    missing = _connector(tls_server, ssl_cafile=str(tls_files.ca) + ".missing")
    took, error = run(_start_fails(missing))
    assert took < 0.5 and "could not load its TLS files" in str(error)
    wrong_password = _connector(
        tls_server,
        ssl_cafile=str(tls_files.ca),
        ssl_certfile=str(tls_files.client_cert),
        ssl_keyfile=str(tls_files.client_key_encrypted),
        ssl_password=CANARY,
    )
    _, error = run(_start_fails(wrong_password))
    assert "could not load its TLS files" in str(error) and CANARY not in str(error)


def test_acl_login_works_and_a_wrong_password_fails_at_once_without_showing_it(
    acl_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ACL user logs in (password as a field, and in the URL); a wrong password fails
    on_start at once (not after startup_timeout), naming the user; with DEBUG logs on, the
    canary password is in no log record, error, traceback or repr."""
    host = acl_server.split("://", 1)[1]
    in_url = f"redis://{USER}:{CANARY}@{host}"
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        assert run(_round_trip(_connector(acl_server, username=USER, password=CANARY))) == [
            b"over-tls"
        ]
        url_connector = _connector(in_url)
        assert run(_round_trip(url_connector)) == [b"over-tls"]
        wrong = _connector(acl_server, username=USER, password=CANARY + "-wrong")
        took, error = run(_start_fails(wrong))
        errors.append(error)
        assert took < 2.0, f"took {took:.1f}s"
        assert f"as user {USER!r}" in str(error) and "refused the login" in str(error)
        _, anonymous = run(_start_fails(_connector(acl_server, startup_timeout=3.0)))
        errors.append(anonymous)

        async def handler_error_and_resend() -> None:
            cc = RedisConnectorConfig(connector_name="sec", url=in_url)
            qc = RedisQueueConfig(
                connector_name="sec", stream=unique("sec-app"), group="g", frequency=0.2
            )
            app = romeways.App(shutdown_timeout=2)
            app.connector_register(connector=RedisQueueConnector, config=cc)
            seen: list[int] = []
            both = asyncio.Event()

            @app.queue_consumer(queue_name="q", config=qc)
            async def handle(message: romeways.Message) -> None:
                seen.append(message.rw_resend_times)
                if len(seen) == 2:
                    both.set()
                if message.rw_resend_times == 0:
                    raise romeways.ResendException("again")
                raise RuntimeError("handler failed")

            await app.queue_handle("q", str, config=qc).publish("hello")
            task = asyncio.create_task(app.start())
            await asyncio.wait_for(both.wait(), 10)
            await asyncio.sleep(0.2)  # the dead letter and its acknowledgement
            app.stop()
            await task
            await app.close_publishers()
            assert seen == [0, 1]

        run(handler_error_and_resend())
    texts = [repr(url_connector), repr(url_connector.connector_config), str(url_connector)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    for record in caplog.records:
        texts.append(record.getMessage() + (record.exc_text or "") + repr(record.args))
    assert all(CANARY not in text for text in texts), [t for t in texts if CANARY in t][:2]
    assert any("handler failed" in text for text in texts)  # the error path was logged
