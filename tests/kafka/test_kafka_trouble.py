"""Broker trouble: unreachable at start, lost mid-run (a network cut through a proxy of the
test's own, and a killed broker), and closing while it is gone. These tests start their own
Tansu broker even when ROMEWAYS_TEST_KAFKA names another, because they break it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import (
    TcpProxy,
    create_topic,
    free_port,
    produce,
    start_authenticated_broker,
    start_broker,
)

import romeways
from romeways.connectors.kafka import KafkaQueueConnector, SaslMechanism

from .conftest import kafka_configs, kafka_connector, run_app_until, run_async


def test_unreachable_at_start_retries_with_backoff_then_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="romeways")
    address = f"127.0.0.1:{free_port()}"
    _, queue_config = kafka_configs(address, "orders", "group")
    connector_config = romeways.KafkaConnectorConfig(
        connector_name="kafka-test", bootstrap_server=address, startup_timeout=3.0
    )
    connector = KafkaQueueConnector(
        connector_config=connector_config, queue_name="q", config=queue_config
    )
    started, cpu_started = time.monotonic(), time.process_time()
    with pytest.raises(romeways.ConnectorError) as info:
        run_async(connector.on_start())
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started

    assert 2.5 < elapsed < 6, elapsed
    assert cpu < 0.2 * elapsed, f"busy waiting: {cpu:.2f}s CPU in {elapsed:.2f}s"
    message = str(info.value)
    for part in ("'kafka-test'", "'orders'", address, "startup_timeout"):
        assert part in message
    retries = [r for r in caplog.records if "cannot reach the Kafka cluster" in r.getMessage()]
    assert 2 <= len(retries) <= 6, [r.getMessage() for r in retries]
    assert all(r.levelno == logging.WARNING for r in retries)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_a_refused_sasl_login_fails_at_once_and_says_so(
    mechanism: SaslMechanism, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password (the SASL gateway of tests/broker.py refuses it as a Kafka broker does):
    on_start fails at once, not after startup_timeout, with an error that names the login, the
    user and the mechanism, not "could not reach the Kafka cluster"; the password nowhere."""
    caplog.set_level(logging.DEBUG)
    password = "right-Pa55word-0c1d"
    wrong = "wrong-Pa55word-9f8e"
    with start_authenticated_broker("svc-billing", password, mechanism, use_env=False) as broker:
        config = romeways.KafkaConnectorConfig(
            connector_name="kafka-test",
            bootstrap_server=broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username="svc-billing",
            sasl_plain_password=wrong,
            startup_timeout=30.0,
        )
        _, queue_config = kafka_configs(broker.bootstrap, "orders", "group")
        connector = KafkaQueueConnector(
            connector_config=config, queue_name="q", config=queue_config
        )
        started = time.monotonic()
        with pytest.raises(romeways.ConnectorError) as info:
            run_async(connector.on_start())
        elapsed = time.monotonic() - started
        assert broker.gateway is not None and broker.gateway.stats.failures.get(mechanism)
    message = str(info.value)
    assert elapsed < 5, f"failed after {elapsed:.1f}s, not at once"
    assert "could not reach" not in message, message
    for part in ("'kafka-test'", "refused the SASL", mechanism, "'svc-billing'", "password"):
        assert part in message, message
    assert wrong not in message and wrong not in caplog.text
    assert not any("cannot reach the Kafka cluster" in r.getMessage() for r in caplog.records)


def test_app_start_fails_when_the_broker_stays_away() -> None:
    app = romeways.App(shutdown_timeout=2)
    _, queue_config = kafka_configs("unused:1", "orders", "group")

    @app.queue_consumer(queue_name="orders", config=queue_config)
    async def handler(message: romeways.Message) -> None:
        raise AssertionError("no broker, no message")

    app.connector_register(
        connector=KafkaQueueConnector,
        config=romeways.KafkaConnectorConfig(
            connector_name="kafka-test",
            bootstrap_server=f"127.0.0.1:{free_port()}",
            startup_timeout=1.5,
        ),
        spawn_process=True,
    )
    started = time.monotonic()
    with pytest.raises(romeways.WorkerCrashedError, match="start-up"):
        run_async(app.start(), timeout=30)
    assert time.monotonic() - started < 15


def test_bad_ssl_files_fail_at_once(tmp_path: Path) -> None:
    connector_config = romeways.KafkaConnectorConfig(
        connector_name="kafka-test",
        bootstrap_server=f"127.0.0.1:{free_port()}",
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "missing-ca.pem"),
    )
    _, queue_config = kafka_configs("unused:1", "orders", "group")
    connector = KafkaQueueConnector(
        connector_config=connector_config, queue_name="q", config=queue_config
    )
    started = time.monotonic()
    with pytest.raises(romeways.ConnectorError, match="SSL files"):
        run_async(connector.on_start())
    assert time.monotonic() - started < 2


def test_network_cut_longer_than_the_session_then_resume(
    tmp_path: Path, names: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """All traffic is cut for longer than the session timeout; the consumer logs the outage,
    comes back by itself, and every message before, during and after is handled."""
    caplog.set_level(logging.WARNING)
    proxy_port = free_port()
    topic, group = names("cut"), names("cut-group")
    handled: list[str] = []
    with start_broker(advertised_port=proxy_port, use_env=False) as broker:

        async def scenario() -> None:
            proxy = TcpProxy(proxy_port, broker.listener_port)
            # While the proxy is not up, nothing reaches the broker: start it first.
            await proxy.start()
            try:
                await create_topic(broker.bootstrap, topic)
                await produce(broker.bootstrap, topic, [f"before-{i}".encode() for i in range(5)])
                app = romeways.App(shutdown_timeout=5)
                connector_config, queue_config = kafka_configs(broker.bootstrap, topic, group)

                @app.queue_consumer(queue_name="cut", config=queue_config)
                async def handler(message: romeways.Message) -> None:
                    handled.append(message.payload)

                app.connector_register(connector=KafkaQueueConnector, config=connector_config)

                async def cut_and_restore() -> None:
                    while len(handled) < 5:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    await proxy.cut()
                    await asyncio.sleep(8)  # longer than the 6 s session timeout
                    await proxy.restore()
                    await produce(
                        broker.bootstrap, topic, [f"after-{i}".encode() for i in range(5)]
                    )

                fault = asyncio.create_task(cut_and_restore())
                await run_app_until(app, lambda: sum(p.startswith("after") for p in handled) == 5)
                await fault
            finally:
                await proxy.close()

        run_async(scenario(), timeout=90)

    expected = {f"before-{i}" for i in range(5)} | {f"after-{i}" for i in range(5)}
    assert set(handled) == expected
    ours = [r.getMessage() for r in caplog.records if r.name == "romeways"]
    assert any("lost contact with the Kafka cluster" in m for m in ours), ours
    assert any("reached the Kafka cluster again" in m for m in ours), ours


def test_broker_gone_mid_run_close_is_bounded(names: Callable[[str], str]) -> None:
    topic, group = names("gone"), names("gone-group")
    with start_broker(use_env=False) as broker:

        async def scenario() -> None:
            await create_topic(broker.bootstrap, topic)
            await produce(broker.bootstrap, topic, [b"m0", b"m1", b"m2"])
            connector = kafka_connector(broker.bootstrap, topic, group, commit_timeout=2.0)
            await connector.on_start()
            chunk: list[bytes] = []
            while len(chunk) < 3:
                chunk.extend(await connector.get_messages(10))
            await connector.ack([0])
            broker.kill()

            started, cpu_started = time.monotonic(), time.process_time()
            # Fetching neither raises nor spins while the broker is away.
            for _ in range(3):
                assert not await connector.get_messages(10)
            await connector.ack([1])  # the commit times out: logged, kept for later
            await connector.close()
            elapsed = time.monotonic() - started
            cpu = time.process_time() - cpu_started
            assert elapsed < 3 * 0.5 + 2.0 + 6.0, elapsed
            assert cpu < 0.2 * elapsed, f"busy waiting: {cpu:.2f}s CPU in {elapsed:.2f}s"

        run_async(scenario())


def test_app_stop_returns_in_time_when_the_broker_is_gone(names: Callable[[str], str]) -> None:
    topic, group = names("stop"), names("stop-group")
    handled: list[str] = []
    with start_broker(use_env=False) as broker:

        async def scenario() -> None:
            await create_topic(broker.bootstrap, topic)
            await produce(broker.bootstrap, topic, [b"m0"])
            app = romeways.App(shutdown_timeout=10)
            connector_config, queue_config = kafka_configs(broker.bootstrap, topic, group)

            @app.queue_consumer(queue_name="stop", config=queue_config)
            async def handler(message: romeways.Message) -> None:
                handled.append(message.payload)

            app.connector_register(connector=KafkaQueueConnector, config=connector_config)
            task = asyncio.create_task(app.start())
            while not handled:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            broker.kill()
            await asyncio.sleep(2)
            assert not task.done()
            started = time.monotonic()
            app.stop()
            await asyncio.wait_for(task, 30)
            assert time.monotonic() - started < 10

        run_async(scenario())
