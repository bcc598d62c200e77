"""The Redis configs: what they refuse (ConfigError naming the field), what they mask, and the
import-time behaviour of the connector module."""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest

import romeways
from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector
from romeways.connectors.support import set_worker_slot, worker_identity

CANARY = "s3cr3t-Canary-7781"


def queue(**fields: object) -> RedisQueueConfig:
    options: dict[str, object] = {"connector_name": "r", "stream": "s", "group": "g", **fields}
    return RedisQueueConfig(**options)  # type: ignore[arg-type]  # fields vary per test


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"url": "http://localhost"}, "RedisConnectorConfig.url='http://localhost'"),
        ({"url": "redis://"}, "names no host"),
        ({"url": "redis://h:port/0"}, "port"),
        ({"url": "redis://h/zero"}, "database number"),
        ({"url": "redis://h/0?ssl=true"}, "not in the URL's query"),
        ({"ssl_cafile": "/ca.pem"}, "RedisConnectorConfig.ssl_cafile='/ca.pem'"),
        ({"url": "rediss://h", "ssl_keyfile": "/k.pem"}, "give the certificate too"),
        ({"socket_timeout": 0}, "RedisConnectorConfig.socket_timeout=0"),
        ({"socket_timeout": 0.4}, "blocking reads must end before it"),
        ({"socket_connect_timeout": float("nan")}, "socket_connect_timeout=nan"),
        ({"startup_timeout": -1}, "startup_timeout=-1"),
        ({"username": ""}, "RedisConnectorConfig.username=''"),
        ({"url": "redis://u@h", "username": "v"}, "names a user already"),
    ],
)
def test_connector_config_refuses_nonsense_naming_the_field(
    fields: dict[str, object], names: str
) -> None:
    options: dict[str, object] = {"connector_name": "r", **fields}
    with pytest.raises(romeways.ConfigError, match="is invalid") as caught:
        RedisConnectorConfig(**options)  # type: ignore[arg-type]  # fields vary per test
    assert names in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"stream": " "}, "RedisQueueConfig.stream=' '"),
        ({"group": ""}, "RedisQueueConfig.group=''"),
        ({"consumer": ""}, "RedisQueueConfig.consumer=''"),
        ({"consumer": "w-{pid}"}, "may hold {host}, {connector} and {slot}"),
        ({"consumer": "w-{"}, "RedisQueueConfig.consumer='w-{'"),
        ({"claim_idle": 0}, "RedisQueueConfig.claim_idle=0"),
        ({"claim_idle": float("inf")}, "claim_idle=inf"),
        ({"block": 0}, "RedisQueueConfig.block=0"),
        ({"max_deliveries": 0}, "RedisQueueConfig.max_deliveries=0"),
        ({"maxlen": 0}, "RedisQueueConfig.maxlen=0"),
        ({"maxlen": 2.5}, "give an int or None"),
    ],
)
def test_queue_config_refuses_nonsense_naming_the_field(
    fields: dict[str, object], names: str
) -> None:
    with pytest.raises(romeways.ConfigError, match="is invalid") as caught:
        queue(**fields)
    assert names in str(caught.value)


def test_a_blocking_read_must_end_before_the_socket_timeout() -> None:
    """block >= socket_timeout - 0.5 is refused when the connector is built, naming both
    fields; the default block follows frequency and stays below the socket timeout."""
    connector = RedisConnectorConfig(connector_name="r", socket_timeout=2.0)
    with pytest.raises(romeways.ConfigError) as caught:
        RedisQueueConnector(connector_config=connector, queue_name="q", config=queue(block=1.8))
    text = str(caught.value)
    assert "RedisQueueConfig.block=1.8 is invalid" in text
    assert "RedisConnectorConfig.socket_timeout=2.0" in text and "block <= 1.5" in text
    ok = RedisQueueConnector(connector_config=connector, queue_name="q", config=queue(block=1.5))
    assert ok.block_seconds == 1.0  # never longer than frequency (1 s)
    slow = RedisQueueConnector(
        connector_config=connector, queue_name="q", config=queue(frequency=30.0)
    )
    assert slow.block_seconds == 1.0  # half the socket timeout; get_messages loops for longer
    zero = RedisQueueConnector(
        connector_config=connector, queue_name="q", config=queue(frequency=0.0)
    )
    assert zero.block_seconds == 0.0  # a read that does not block (BLOCK 0 would never end)


def test_passwords_are_masked_in_repr_errors_and_the_url() -> None:
    config = RedisConnectorConfig(
        connector_name="r",
        url=f"rediss://svc:{CANARY}@cache.example.com:6380/2",
        ssl_password=CANARY,
    )
    shown = repr(config)
    assert CANARY not in shown
    assert "rediss://svc:***@cache.example.com:6380/2" in shown and "ssl_password='***'" in shown
    assert config.target == "rediss://cache.example.com:6380/2"
    with pytest.raises(romeways.ConfigError) as caught:
        RedisConnectorConfig(connector_name="r", url=f"redis://:{CANARY}@h", password=CANARY)
    text = "".join(traceback.format_exception(caught.value))
    assert "RedisConnectorConfig.password='***' is invalid" in text and CANARY not in text
    with pytest.raises(romeways.ConfigError) as bad_url:
        RedisConnectorConfig(connector_name="r", url=f"redis://u:{CANARY}@h:notaport")
    assert CANARY not in str(bad_url.value) and "redis://u:***@h:notaport" in str(bad_url.value)
    with pytest.raises(romeways.ConfigError) as not_str:
        RedisConnectorConfig(connector_name="r", url=CANARY.encode())  # type: ignore[arg-type]  # an untyped caller
    assert CANARY not in str(not_str.value) and "url is invalid: give a str" in str(not_str.value)
    connector = RedisQueueConnector(connector_config=config, queue_name="q", config=queue())
    assert CANARY not in repr(connector)


def test_consumer_names_follow_the_worker_slot_and_the_template() -> None:
    """None: worker_identity() ('<host>-<connector>[-<slot>]'); a template gets {host},
    {connector} and {slot} ('main' in process); a name without {slot} is refused in slot 1+."""
    connector = RedisConnectorConfig(connector_name="orders")
    try:
        inproc = RedisQueueConnector(connector_config=connector, queue_name="q", config=queue())
        assert inproc.consumer == worker_identity("orders") and inproc.consumer.endswith("-orders")
        named = RedisQueueConnector(
            connector_config=connector, queue_name="q", config=queue(consumer="api-{slot}")
        )
        assert named.consumer == "api-main"
        set_worker_slot(3)
        slot3 = RedisQueueConnector(connector_config=connector, queue_name="q", config=queue())
        assert slot3.consumer == f"{worker_identity('orders')}" and slot3.consumer.endswith(
            "-orders-3"
        )
        templated = RedisQueueConnector(
            connector_config=connector,
            queue_name="q",
            config=queue(consumer="{host}/{connector}/{slot}"),
        )
        assert templated.consumer.endswith("/orders/3")
        with pytest.raises(romeways.ConfigError, match=r"consumer='fixed' is invalid.*\{slot\}"):
            RedisQueueConnector(
                connector_config=connector, queue_name="q", config=queue(consumer="fixed")
            )
    finally:
        set_worker_slot(None)


def test_import_romeways_does_not_import_redis_and_a_missing_extra_says_how_to_install() -> None:
    code = (
        "import sys\n"
        "import romeways\n"
        "assert 'redis' not in sys.modules, 'import romeways loaded redis-py'\n"
        "assert romeways.RedisQueueConnector.__module__ == 'romeways.connectors.redis._connector'\n"
        "print('lazy ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "lazy ok", proc.stderr
    blocked = (
        "import sys\n"
        "sys.modules['redis'] = None\n"  # as if redis-py were not installed
        "import romeways\n"
        "try:\n"
        "    romeways.RedisConnectorConfig\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60
    )
    assert "pip install 'romeways[redis]'" in proc.stdout, proc.stdout + proc.stderr
