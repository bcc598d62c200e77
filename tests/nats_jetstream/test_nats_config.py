"""NATS configs: defaults, validation naming the fields (the bad combinations of ack_wait,
handler_timeout, max_ack_pending and max_chunk_size among them), secrets and URL passwords kept
out of repr and errors, and the lazy import without nats-py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import traceback
from typing import Any

import pytest

import romeways
from romeways.connectors.nats import NatsConnectorConfig, NatsQueueConfig

CANARY = "canary-N4ts-pw-5e1f"


def queue(**fields: Any) -> NatsQueueConfig:
    return NatsQueueConfig(
        **{
            "connector_name": "n",
            "stream": "ORDERS",
            "subject": "orders.new",
            "durable": "b",
            **fields,
        }
    )


def connector(**fields: Any) -> NatsConnectorConfig:
    return NatsConnectorConfig(**{"connector_name": "n", **fields})


def test_defaults_fit_the_generic_fields() -> None:
    config = queue()
    assert (config.ack_wait, config.create, config.in_progress) == (30.0, True, True)
    assert config.effective_max_ack_pending == 1000
    assert queue(max_chunk_size=800).effective_max_ack_pending == 1600
    assert queue(max_ack_pending=20, max_chunk_size=20).effective_max_ack_pending == 20
    assert config.max_deliveries == 5 and config.deliver_policy == "all"
    options = connector().connect_options()
    assert options["servers"] == ["nats://127.0.0.1:4222"]
    assert "tls" not in options and "user" not in options
    assert connector(servers="a:1, tls://b:2").connect_options()["servers"] == [
        "nats://a:1",
        "tls://b:2",
    ]
    assert connector(servers="tls://b:2").uses_tls


def test_missing_fields_are_named() -> None:
    with pytest.raises(romeways.ConfigFieldError, match="missing required field 'durable'"):
        NatsQueueConfig(connector_name="n", stream="S", subject="s")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"stream": "has.dot"}, "stream="),
        ({"stream": "a b"}, "stream="),
        ({"durable": "d>"}, "durable="),
        ({"subject": "orders.*"}, "subject="),
        ({"subject": "orders..new"}, "subject="),
        ({"ack_wait": 0.5}, "ack_wait="),
        ({"ack_wait": float("inf")}, "ack_wait="),
        ({"max_deliveries": 0}, "max_deliveries="),
        ({"deliver_policy": "last"}, "deliver_policy="),
        ({"storage": "disk"}, "storage="),
        ({"max_age": 0.0}, "max_age="),
        ({"duplicate_window": -1.0}, "duplicate_window="),
    ],
)
def test_bad_queue_fields_are_named(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(romeways.ConfigError, match=rf"NatsQueueConfig\.{named}"):
        queue(**fields)


def test_max_ack_pending_below_max_chunk_size_is_refused_naming_both() -> None:
    with pytest.raises(romeways.ConfigError) as info:
        queue(max_chunk_size=50, max_ack_pending=10)
    text = str(info.value)
    assert "NatsQueueConfig.max_ack_pending=10 is invalid" in text
    assert "max_chunk_size=50" in text
    queue(max_chunk_size=50, max_ack_pending=50)


def test_without_in_progress_ack_wait_must_outlast_the_handler() -> None:
    """``in_progress=False``: a held message is redelivered once ack_wait passes, so ack_wait
    must exceed the longest hold (handler_timeout, times max_chunk_size when sequential, plus
    dead_letter_timeout); both fields are named."""
    with pytest.raises(romeways.ConfigError, match="handler_timeout") as info:
        queue(in_progress=False)  # no handler_timeout: unbounded
    assert "NatsQueueConfig.ack_wait=30.0 is invalid" in str(info.value)
    with pytest.raises(romeways.ConfigError, match="handler_timeout"):
        queue(in_progress=False, handler_timeout=10.0, dead_letter_timeout=30.0, ack_wait=30.0)
    queue(in_progress=False, handler_timeout=10.0, dead_letter_timeout=30.0, ack_wait=41.0)
    with pytest.raises(romeways.ConfigError, match="x max_chunk_size"):
        queue(
            in_progress=False,
            sequential=True,
            handler_timeout=5.0,
            dead_letter_timeout=5.0,
            max_chunk_size=10,
            ack_wait=41.0,
        )
    queue(handler_timeout=600.0, ack_wait=5.0)  # in-progress signals keep it: fine


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"servers": "http://h:1"}, "servers="),
        ({"servers": ""}, "servers="),
        ({"servers": "nats://h:notaport"}, "servers="),
        ({"user": "u"}, "password="),
        ({"password": CANARY}, "password="),
        ({"user": "u", "password": CANARY, "token": CANARY}, "token="),
        ({"tls_cafile": "ca.pem"}, "tls_cafile="),
        ({"tls": True, "tls_keyfile": "k.pem"}, "tls_keyfile="),
        ({"tls": True, "tls_certfile": "c.pem", "tls_key_password": CANARY}, "tls_key_password="),
        ({"startup_timeout": 0.0}, "startup_timeout="),
        ({"ping_interval": float("nan")}, "ping_interval="),
        ({"max_outstanding_pings": 0}, "max_outstanding_pings="),
        ({"name": " "}, "name="),
    ],
)
def test_bad_connector_fields_are_named_and_secrets_masked(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(romeways.ConfigError, match=rf"NatsConnectorConfig\.{named}") as info:
        connector(**fields)
    assert CANARY not in "".join(traceback.format_exception(info.value))


def test_repr_masks_secrets_and_passwords_in_urls() -> None:
    config = connector(
        servers=[f"nats://alice:{CANARY}@h1:4222", f"nats://{CANARY}@h2:4222", "nats://h3:1"],
        tls=True,
        tls_certfile="c.pem",
        tls_keyfile="k.pem",
        tls_key_password=CANARY,
    )
    for text in (repr(config), str(config), repr(dict(config.__rich_repr__())), repr([config])):
        assert CANARY not in text
    assert "nats://alice:***@h1:4222" in repr(config)
    assert "nats://***@h2:4222" in repr(config) and "nats://h3:1" in repr(config)
    assert "tls_key_password='***'" in repr(config)
    assert CANARY not in config.shown_servers()
    assert set(config.url_secrets()) == {CANARY}
    plain = connector(user="svc", password=CANARY)
    assert "password='***'" in repr(plain) and CANARY not in repr(plain)
    assert "token='***'" in repr(connector(token=CANARY))


@pytest.mark.parametrize(
    "servers",
    [f"http://alice:{CANARY}@h:1", [f"nats://alice:{CANARY}@h:1", 5], f"nats://u:{CANARY}@:1"],
)
def test_an_invalid_server_list_is_shown_without_its_password(servers: Any) -> None:
    with pytest.raises(romeways.ConfigError, match=r"NatsConnectorConfig\.servers") as info:
        connector(servers=servers)
    assert CANARY not in "".join(traceback.format_exception(info.value))


def test_without_nats_py_import_romeways_works_and_nats_names_say_how_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["nats"] = None  # as if it were not installed
        import romeways
        romeways.MemoryQueueConnector
        try:
            romeways.NatsQueueConnector
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
    assert "pip install 'romeways[nats]'" in result.stdout


def test_import_romeways_does_not_load_nats_py() -> None:
    code = "import sys, romeways; assert 'nats' not in sys.modules; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
