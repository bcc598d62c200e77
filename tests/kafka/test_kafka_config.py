"""Kafka configs: defaults, validation naming the field, secrets kept out of repr, logs and
errors, declared config types, and the lazy import without aiokafka."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any, cast

import pytest
from broker import free_port, start_broker

import romeways
from romeways._connector import config_types
from romeways.connectors.kafka import KafkaConnectorConfig, KafkaQueueConfig, KafkaQueueConnector

from .conftest import kafka_configs, run_async

CANARY = "canary-Pa55word-7f3e"


def queue_config(**fields: Any) -> KafkaQueueConfig:
    return KafkaQueueConfig(
        **{"connector_name": "k", "topic": "orders", "group_id": "billing", **fields}
    )


def connector_config(**fields: Any) -> KafkaConnectorConfig:
    return KafkaConnectorConfig(
        **{"connector_name": "k", "bootstrap_server": "localhost:9094", **fields}
    )


def test_defaults() -> None:
    queue = queue_config()
    assert queue.auto_offset_reset == "earliest"
    assert (queue.frequency, queue.max_chunk_size, queue.sequential) == (1.0, 10, False)
    assert (queue.fetch_max_wait_ms, queue.idle_fetch_max_wait_ms) == (10, 60)
    assert queue_config(fetch_max_wait_ms=0, idle_fetch_max_wait_ms=2**31 - 1)
    connector = connector_config()
    assert connector.security_protocol == "PLAINTEXT"
    assert connector.client_options()["bootstrap_servers"] == ["localhost:9094"]
    listed = connector_config(bootstrap_server=["a:1", "b:2"])
    assert listed.client_options()["bootstrap_servers"] == ["a:1", "b:2"]
    assert connector_config(bootstrap_server="a:1, b:2").client_options()["bootstrap_servers"] == [
        "a:1",
        "b:2",
    ]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: queue_config(topic=""), "topic"),
        (lambda: queue_config(topic="bad topic"), "topic"),
        (lambda: queue_config(group_id=" "), "group_id"),
        (lambda: queue_config(auto_offset_reset="middle"), "auto_offset_reset"),
        (lambda: queue_config(fetch_max_wait_ms=-1), "fetch_max_wait_ms"),
        (lambda: queue_config(fetch_max_wait_ms=2**31), "fetch_max_wait_ms"),
        (lambda: queue_config(idle_fetch_max_wait_ms=-1), "idle_fetch_max_wait_ms"),
        (lambda: queue_config(idle_fetch_max_wait_ms=2**31), "idle_fetch_max_wait_ms"),
        (lambda: queue_config(idle_fetch_max_wait_ms=0.5), "idle_fetch_max_wait_ms"),
        (lambda: queue_config(fetch_min_bytes=0), "fetch_min_bytes"),
        (lambda: queue_config(fetch_max_bytes=0), "fetch_max_bytes"),
        (lambda: queue_config(max_partition_fetch_bytes=0), "max_partition_fetch_bytes"),
        (lambda: queue_config(session_timeout_ms=0), "session_timeout_ms"),
        (
            lambda: queue_config(session_timeout_ms=6000, heartbeat_interval_ms=6000),
            "heartbeat_interval_ms",
        ),
        (lambda: queue_config(max_poll_interval_ms=0), "max_poll_interval_ms"),
        (lambda: queue_config(commit_timeout=0), "commit_timeout"),
        (lambda: queue_config(max_chunk_size=0), "max_chunk_size"),
        (lambda: connector_config(bootstrap_server=""), "bootstrap_server"),
        (lambda: connector_config(bootstrap_server="localhost"), "bootstrap_server"),
        (lambda: connector_config(bootstrap_server=[]), "bootstrap_server"),
        (lambda: connector_config(client_id=""), "client_id"),
        (lambda: connector_config(security_protocol="TLS"), "security_protocol"),
        (lambda: connector_config(security_protocol="SASL_SSL"), "sasl_mechanism"),
        (
            lambda: connector_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"),
            "sasl_plain_username",
        ),
        (lambda: connector_config(sasl_plain_username="u"), "sasl_plain_username"),
        (lambda: connector_config(ssl_cafile="ca.pem"), "ssl_cafile"),
        (lambda: connector_config(startup_timeout=0), "startup_timeout"),
        (lambda: connector_config(retry_backoff_ms=0), "retry_backoff_ms"),
    ],
)
def test_invalid_values_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{field}=") as info:
        make()
    assert isinstance(info.value, romeways.ConfigError)


def sasl_config(**fields: Any) -> KafkaConnectorConfig:
    return connector_config(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="svc-billing",
        sasl_plain_password=CANARY,
        **fields,
    )


def test_password_is_not_in_repr() -> None:
    config = sasl_config()
    assert config.sasl_plain_password == CANARY
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert CANARY not in text
        assert "sasl_plain_password='***'" in text
        assert "svc-billing" in text
    rich = dict(config.__rich_repr__())
    assert CANARY not in repr(rich)
    ssl_config = connector_config(
        security_protocol="SSL", ssl_certfile="c.pem", ssl_keyfile="k.pem", ssl_password=CANARY
    )
    assert CANARY not in repr(ssl_config)


def test_password_is_not_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A SASL client against a broker that does not speak SASL (or no broker at all) fails;
    nothing it logs, even at DEBUG, nor the error, holds the password."""
    caplog.set_level(logging.DEBUG)
    config = sasl_config(bootstrap_server=f"127.0.0.1:{free_port()}", startup_timeout=1.5)
    _, queue = kafka_configs("unused:1", "orders", "billing")
    connector = KafkaQueueConnector(connector_config=config, queue_name="q", config=queue)
    with pytest.raises(romeways.ConnectorError) as info:
        run_async(connector.on_start())
    error: BaseException | None = info.value
    while error is not None:
        assert CANARY not in str(error) and CANARY not in repr(error)
        error = error.__cause__ or error.__context__
    assert caplog.records
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in caplog.text


def test_password_is_not_logged_by_a_sasl_handshake(
    caplog: pytest.LogCaptureFixture, kafka_bootstrap: str
) -> None:
    caplog.set_level(logging.DEBUG)
    config = sasl_config(bootstrap_server=kafka_bootstrap, startup_timeout=1.5)
    _, queue = kafka_configs("unused:1", "orders", "billing")
    connector = KafkaQueueConnector(connector_config=config, queue_name="q", config=queue)
    with pytest.raises(romeways.ConnectorError) as info:
        run_async(connector.on_start())
    assert CANARY not in str(info.value)
    assert CANARY not in caplog.text


def test_connector_declares_its_config_types() -> None:
    assert config_types(KafkaQueueConnector) == (KafkaConnectorConfig, KafkaQueueConfig)
    app = romeways.App()
    with pytest.raises(romeways.RegistrationError, match="KafkaConnectorConfig"):
        app.connector_register(
            connector=KafkaQueueConnector,
            config=cast(Any, romeways.MemoryConnectorConfig(connector_name="k")),
        )
    app.connector_register(connector=KafkaQueueConnector, config=connector_config())
    assert romeways.KafkaQueueConnector is KafkaQueueConnector
    assert isinstance(
        KafkaQueueConnector(
            connector_config=connector_config(), queue_name="q", config=queue_config()
        ),
        romeways.Connector,
    )


def test_without_aiokafka_import_romeways_works_and_kafka_names_say_how_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["aiokafka"] = None  # as if it were not installed
        import romeways
        romeways.MemoryQueueConnector
        try:
            romeways.KafkaQueueConnector
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("no error")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout
    assert "pip install 'romeways[kafka]'" in result.stdout


def test_password_is_redacted_from_aiokafka_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka logs each request at DEBUG, a SASL PLAIN login (user and password) included."""
    caplog.set_level(logging.DEBUG)
    config = sasl_config()
    _, queue = kafka_configs("unused:1", "orders", "billing")
    KafkaQueueConnector(connector_config=config, queue_name="q", config=queue)
    login = b"\x00svc-billing\x00" + CANARY.encode()
    request = f"SaslAuthenticateRequest_v1(sasl_auth_bytes={login!r})"
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 9092, 3, request)
    assert "SaslAuthenticateRequest_v1" in caplog.text
    assert CANARY not in caplog.text


def test_failed_scram_login_keeps_the_password_out(caplog: pytest.LogCaptureFixture) -> None:
    """A real authentication failure: Tansu requiring SASL refuses the login."""
    caplog.set_level(logging.DEBUG)
    with start_broker(use_env=False, authentication=True) as broker:
        config = connector_config(
            bootstrap_server=broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="svc-billing",
            sasl_plain_password=CANARY,
            startup_timeout=3.0,
        )
        _, queue = kafka_configs(broker.bootstrap, "orders", "billing")
        connector = KafkaQueueConnector(connector_config=config, queue_name="q", config=queue)
        with pytest.raises(romeways.ConnectorError) as info:
            run_async(connector.on_start())
    assert "SaslAuthenticate" in caplog.text, "the login was never attempted"
    error: BaseException | None = info.value
    while error is not None:
        assert CANARY not in str(error) and CANARY not in repr(error)
        error = error.__cause__ or error.__context__
    assert CANARY not in caplog.text


def test_every_field_of_the_kafka_configs_has_its_type_checked() -> None:
    """The configs live in a module of the package but say they are the package's: their field
    annotations still resolve, so no field goes unchecked (an unresolved one would take any
    value), and the public names are where they were."""
    from romeways._config import _field_checks

    for cls in (KafkaConnectorConfig, KafkaQueueConfig):
        assert cls.__module__ == "romeways.connectors.kafka"
        checked = {name for name, _, _ in _field_checks(cls)}
        assert checked == set(cls.__struct_fields__), set(cls.__struct_fields__) - checked
    with pytest.raises(romeways.ConfigError, match=r"ssl_context='x' is invalid: give a ssl"):
        connector_config(security_protocol="SSL", ssl_context=cast(Any, "x"))
    with pytest.raises(romeways.ConfigError, match=r"sasl_mechanism='MD5' is invalid: give one"):
        connector_config(sasl_mechanism=cast(Any, "MD5"))
