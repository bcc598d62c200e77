"""What goes wrong at start-up and how it is said: an unreachable broker (retried with backoff
until startup_timeout), a refused login, a missing vhost, a queue that exists with other
settings or does not exist (each failing at once, never showing the password); TLS for real,
through a TLS-terminating proxy with certificates the test makes (CA, server, client); a close
while the broker cannot be reached ends in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker import HOST, TcpProxy, free_port
from faults.rabbithelp import declare, publish, run
from tlscerts import have_openssl, make_pki
from yarl import URL

import romeways
from romeways.connectors.rabbitmq import RabbitMQQueueConnector

from .conftest import fetch, rabbit_configs

CANARY = "canary-pw-41b7e2"


def start_fails(
    url: str, queue: str, *, startup_timeout: float = 20.0, **queue_options: object
) -> tuple[romeways.ConnectorError, float]:
    connector_config, queue_config = rabbit_configs(
        url, queue, connector={"startup_timeout": startup_timeout}, **queue_options
    )
    connector = RabbitMQQueueConnector(
        connector_config=connector_config, queue_name="q", config=queue_config
    )
    started = time.monotonic()
    with pytest.raises(romeways.ConnectorError) as info:
        run(connector.on_start())
    run(connector.close())
    return info.value, time.monotonic() - started


def no_canary(error: BaseException | None, text: str) -> None:
    assert CANARY not in text
    while error is not None:
        assert CANARY not in str(error) and CANARY not in repr(error)
        error = error.__cause__ or error.__context__


def test_an_unreachable_broker_is_retried_until_startup_timeout(
    queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="romeways")
    url = f"amqp://guest:{CANARY}@{HOST}:{free_port()}/"
    error, took = start_fails(url, queue, startup_timeout=1.5)
    assert 1.4 <= took < 5.0, took
    assert f"could not reach RabbitMQ at {HOST}:" in str(error)
    assert "within startup_timeout=1.5s" in str(error)
    assert "retrying in" in caplog.text  # the kit's backoff, logged per attempt
    no_canary(error, caplog.text)


def test_a_refused_login_fails_at_once_without_the_password(
    rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = str(URL(rabbit_url).with_password(CANARY))
    error, took = start_fails(url, queue)
    assert took < 3.0, f"{took:.1f}s: retried as if the broker were away"
    assert "refused the login of user 'guest'" in str(error) and "not retried" in str(error)
    no_canary(error, caplog.text)


def test_a_missing_vhost_fails_at_once_and_says_so(rabbit_url: str, queue: str) -> None:
    url = str(URL(rabbit_url).with_path("/romeways-no-such-vhost"))
    error, took = start_fails(url, queue)
    assert took < 3.0
    assert "check that the vhost in url exists" in str(error)
    assert "'romeways-no-such-vhost'" in str(error)


def test_a_queue_with_other_settings_or_none_fails_at_once(rabbit_url: str, queue: str) -> None:
    run(declare(rabbit_url, queue, queue_type="classic"))
    error, took = start_fails(rabbit_url, queue)  # quorum wanted, classic there
    assert took < 3.0
    assert "exists with other settings" in str(error) and "x-queue-type" in str(error)
    missing, _ = start_fails(rabbit_url, f"{queue}-missing", declare=False)
    assert "the queue does not exist" in str(missing)


def test_close_while_the_broker_cannot_be_reached_ends_in_time(rabbit_url: str, queue: str) -> None:
    """The network goes while the connector holds unfinished messages: close() gives up giving
    them back (the broker returns them itself when the connection dies) within its 3 s."""
    run(publish(rabbit_url, queue, [b"m1", b"m2"]))
    broker = URL(rabbit_url)
    port = free_port()

    async def scenario() -> float:
        proxy = TcpProxy(port, broker.port or 5672)
        await proxy.start()
        connector_config, queue_config = rabbit_configs(str(broker.with_port(port)), queue)
        connector = RabbitMQQueueConnector(
            connector_config=connector_config, queue_name="q", config=queue_config
        )
        await connector.on_start()
        await fetch(connector, 2)
        await proxy.cut()
        started = time.monotonic()
        await connector.close()
        took = time.monotonic() - started
        await proxy.close()
        return took

    assert run(scenario()) < 3.5


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, signed by
    it, and a second CA that signed nothing of these (``tlscerts``: ca.pem, server.pem, ...)."""
    if not have_openssl():
        pytest.skip("needs the openssl command")
    return make_pki(tmp_path_factory.mktemp("tls")).directory


@contextlib.asynccontextmanager
async def tls_proxy(certs: Path, target: int) -> AsyncIterator[int]:
    """A TLS-terminating proxy in this loop: TLS (client certificate required) outside,
    plain AMQP to the broker inside."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(accept, HOST, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_amqps_with_a_client_certificate_for_real(
    rabbit_url: str, queue: str, certificates: Path
) -> None:
    """amqps through the TLS proxy: the CA checks the server (host name included), the client
    certificate is presented and checked; a message goes through. With the wrong CA the start
    fails at once with an error that says where to look."""
    broker = URL(rabbit_url)

    async def scenario() -> tuple[list[bytes], romeways.ConnectorError, float]:
        async with tls_proxy(certificates, broker.port or 5672) as port:
            url = str(broker.with_scheme("amqps").with_host("localhost").with_port(port))
            files = {
                "ssl_cafile": str(certificates / "ca.pem"),
                "ssl_certfile": str(certificates / "client.pem"),
                "ssl_keyfile": str(certificates / "client.key"),
            }
            connector_config, queue_config = rabbit_configs(url, queue, connector=files)
            connector = RabbitMQQueueConnector(
                connector_config=connector_config, queue_name="q", config=queue_config
            )
            await connector.on_start()
            await connector.publish(b"over tls")
            got = await fetch(connector, 1)
            await connector.ack([d for d, _ in got])
            await connector.close()
            wrong = {**files, "ssl_cafile": str(certificates / "other-ca.pem")}
            bad_config, _ = rabbit_configs(url, queue, connector=wrong)
            bad = RabbitMQQueueConnector(
                connector_config=bad_config, queue_name="q", config=queue_config
            )
            started = time.monotonic()
            try:
                await bad.on_start()
            except romeways.ConnectorError as exc:
                return [data for _, data in got], exc, time.monotonic() - started
            raise AssertionError("a broker certificate from another CA was accepted")

    received, error, took = run(scenario())
    assert received == [b"over tls"]
    assert took < 3.0, "a certificate the CA did not sign was retried as if the broker were away"
    assert "could not make a TLS connection" in str(error) and "ssl_cafile" in str(error)
