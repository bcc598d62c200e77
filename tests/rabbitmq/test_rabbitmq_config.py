"""The RabbitMQ configs (no broker needed): defaults derived from the queue, nonsense refused
with errors that name the field, the password in the URL masked everywhere; the ack window's
rule that a ``multiple`` ack never covers an unfinished delivery; the import without
aio-pika."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import romeways
from romeways.connectors.rabbitmq import (
    RabbitMQConnectorConfig,
    RabbitMQQueueConfig,
    RabbitMQQueueConnector,
    mask_url,
)
from romeways.connectors.rabbitmq._acks import AckWindow

CANARY = "pw-canary-7f3a9c"
URL = f"amqp://svc:{CANARY}@rabbit.example:5672/billing"


def queue(**options: Any) -> RabbitMQQueueConfig:
    return RabbitMQQueueConfig(connector_name="r", **{"queue": "orders", **options})


def connector(**options: Any) -> RabbitMQConnectorConfig:
    return RabbitMQConnectorConfig(connector_name="r", **{"url": URL, **options})


def test_public_names_and_defaults() -> None:
    assert romeways.RabbitMQQueueConnector is RabbitMQQueueConnector
    assert romeways.RabbitMQConnectorConfig is RabbitMQConnectorConfig
    assert romeways.RabbitMQQueueConfig is RabbitMQQueueConfig
    config = queue()
    assert config.queue_type == "quorum" and config.declare
    assert config.queue_arguments() == {"x-queue-type": "quorum"}
    assert config.effective_prefetch == 40  # 4 * max_chunk_size (10)
    assert queue(max_chunk_size=500).effective_prefetch == 2000
    assert queue(max_chunk_size=20_000).effective_prefetch == 65_535  # AMQP's most
    assert queue(prefetch=7).effective_prefetch == 7
    assert queue(max_concurrency=100).effective_prefetch == 110  # room for every slot
    assert config.effective_delivery_limit == 5  # retries (3) + 2
    assert queue(retries=0).effective_delivery_limit == 2
    assert queue(delivery_limit=9).effective_delivery_limit == 9
    assert queue(queue_type="classic").effective_delivery_limit is None
    assert config.publish_routing_key == "orders"
    bound = queue(exchange="events", exchange_type="topic", binding_keys=["orders.*"])
    assert bound.publish_routing_key == "orders"
    assert queue(exchange="events", routing_key="o.new").publish_routing_key == "o.new"
    link = connector()
    assert link.where == "rabbit.example:5672 (vhost 'billing')"
    assert connector(url="amqps://h/").where == "h:5671 (vhost '/')"


@pytest.mark.parametrize(
    ("options", "field", "rule"),
    [
        ({"prefetch": 0}, "prefetch", "an unbounded prefetch is not offered"),
        ({"prefetch": 65_536}, "prefetch", "from 1 to 65535"),
        ({"queue": ""}, "queue", "at most 255 bytes"),
        ({"queue": "amq.orders"}, "queue", "'amq.' (reserved)"),
        ({"queue": "q" * 256}, "queue", "at most 255 bytes"),
        ({"queue_type": "stream"}, "queue_type", "one of 'quorum', 'classic'"),
        ({"arguments": {"x-queue-type": "classic"}}, "arguments", "with queue_type"),
        ({"delivery_limit": 0}, "delivery_limit", "a count >= 1"),
        ({"queue_type": "classic", "delivery_limit": 3}, "delivery_limit", "do not count"),
        (
            {"arguments": {"x-delivery-limit": 4}},
            "delivery_limit",
            "must not exceed the queue's own x-delivery-limit=4",
        ),
        ({"routing_key": "k"}, "routing_key", "only with an exchange"),
        ({"binding_keys": ["k"]}, "binding_keys", "only with an exchange"),
        ({"exchange": "amq.topic"}, "exchange", "not starting with 'amq.'"),
        ({"exchange": "e", "exchange_type": "x-delayed"}, "exchange_type", "one of 'direct'"),
    ],
)
def test_queue_config_refuses_nonsense(options: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(romeways.ConfigError) as info:
        queue(**options)
    assert f"RabbitMQQueueConfig.{field}=" in str(info.value)
    assert rule in str(info.value)


def test_the_queues_own_delivery_limit_bounds_romeways_one() -> None:
    config = queue(retries=1, arguments={"x-delivery-limit": 3})
    assert config.effective_delivery_limit == 3
    assert config.queue_arguments() == {"x-queue-type": "quorum", "x-delivery-limit": 3}


@pytest.mark.parametrize(
    ("options", "field", "rule"),
    [
        ({"url": "http://h:1/"}, "url", "'amqp://user:password@host:port/vhost'"),
        ({"url": "amqp://:5672/"}, "url", "amqp://"),
        ({"ssl_cafile": "/ca.pem"}, "ssl_cafile", "only with an amqps:// url"),
        ({"url": "amqps://h/", "ssl_cafile": ""}, "ssl_cafile", "not to an empty string"),
        (
            {"url": "amqps://h/", "ssl_keyfile": "/k.pem"},
            "ssl_keyfile",
            "give ssl_certfile with it",
        ),
        ({"startup_timeout": 0.0}, "startup_timeout", "seconds > 0"),
        ({"publish_timeout": float("nan")}, "publish_timeout", "seconds > 0"),
        ({"heartbeat": -1}, "heartbeat", "from 0"),
        ({"connection_name": " "}, "connection_name", "non-empty"),
    ],
)
def test_connector_config_refuses_nonsense(options: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(romeways.ConfigError) as info:
        connector(**options)
    assert f"RabbitMQConnectorConfig.{field}=" in str(info.value)
    assert rule in str(info.value)
    assert CANARY not in str(info.value)


def test_ssl_context_and_files_are_either_or() -> None:
    import ssl

    context = ssl.create_default_context()
    assert connector(url="amqps://h/", ssl_context=context).tls() is context
    with pytest.raises(romeways.ConfigError, match="either ssl_context or the ssl_\\* files"):
        connector(url="amqps://h/", ssl_context=context, ssl_cafile="/ca.pem")
    assert connector().tls() is None  # amqp: no TLS


def test_the_password_in_the_url_is_masked_everywhere() -> None:
    config = connector(url=f"amqps://svc:{CANARY}@h:5671/v", ssl_password=CANARY)
    for shown in (repr(config), str(config), repr(config.__rich_repr__())):
        assert CANARY not in shown
        assert "amqps://svc:***@h:5671/v" in shown
    assert "ssl_password='***'" in repr(config)
    assert mask_url("amqp://h/") == "amqp://h/"  # nothing to mask
    # A bad URL is named with its password masked; a URL of the wrong type is masked whole.
    with pytest.raises(romeways.ConfigError) as info:
        connector(url=f"amqpx://svc:{CANARY}@h/")
    assert "'amqpx://svc:***@h/'" in str(info.value) and CANARY not in str(info.value)
    with pytest.raises(romeways.ConfigError) as typed:
        connector(url=URL.encode())
    assert CANARY not in str(typed.value) and "url='***'" in str(typed.value)
    built = RabbitMQQueueConnector(connector_config=config, queue_name="q", config=queue())
    assert CANARY not in repr(built.connector_config) and CANARY not in built._where()


def test_without_aio_pika_import_romeways_works_and_rabbitmq_names_say_how_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["aio_pika"] = None  # as if it were not installed
        import romeways
        romeways.MemoryQueueConnector
        try:
            romeways.RabbitMQQueueConnector
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
    assert "pip install 'romeways[rabbitmq]'" in result.stdout


# -- the ack window -------------------------------------------------------------------------


def test_ack_window_acks_exactly_the_finished_tags() -> None:
    window = AckWindow()
    for tag in range(1, 11):
        window.delivered(tag)
    # 3 waits for a delayed resend: the multiple ack stops at 2, 4-6 go alone.
    assert window.finish([1, 2, 4, 5, 6]) == (2, [4, 5, 6])
    assert window.last_unacked() == 10 and window.unacked() == 5
    # 7-10 finished while 3 still waits: single acks, never a multiple ack over 3.
    assert window.finish([7, 8, 9, 10]) == (None, [7, 8, 9, 10])
    assert window.last_unacked() == 3
    # 3 at last: a multiple ack of 3 alone (4-10 are already acknowledged).
    assert window.finish([3]) == (3, [])
    assert window.unacked() == 0 and window.last_unacked() is None
    window.delivered(11)
    window.delivered(12)
    assert window.finish([11, 12]) == (12, [])


def test_ack_window_never_covers_an_unfinished_tag_in_random_runs() -> None:
    """Against a model of the broker: a multiple ack of tag T acknowledges every unacked tag up
    to T, and T itself must be unacked (else the broker closes the channel)."""
    rng = random.Random(17)
    for _ in range(300):
        window = AckWindow()
        unacked: set[int] = set()
        finished: set[int] = set()
        next_tag = 1
        for _ in range(40):
            for _ in range(rng.randint(0, 5)):
                window.delivered(next_tag)
                unacked.add(next_tag)
                next_tag += 1
            candidates = sorted(unacked - finished)
            done = [t for t in candidates if rng.random() < 0.6]
            finished.update(done)
            multiple, singles = window.finish(done)
            if multiple is not None:
                assert multiple in unacked, "a multiple ack of an unknown tag"
                covered = {t for t in unacked if t <= multiple}
                assert covered <= finished, f"covered unfinished {covered - finished}"
                unacked -= covered
            for tag in singles:
                assert tag in unacked and tag in finished
                unacked.discard(tag)
            assert unacked == set(range(1, next_tag)) - finished
            assert window.unacked() == len(unacked)
            assert window.last_unacked() == (max(unacked) if unacked else None)


def test_ack_window_stays_small_behind_a_delivery_that_never_finishes() -> None:
    """One delivery unfinished for good (a hook past its timeout, a failed resend): the window
    holds it and the prefetch, not every tag acked since."""
    window = AckWindow()
    window.delivered(1)
    for tag in range(2, 100_002):
        window.delivered(tag)
        assert window.finish([tag]) == (None, [tag])
    assert window.unacked() == 1 and window.last_unacked() == 1
    held = sum(len(getattr(window, name)) for name in AckWindow.__slots__)
    assert held <= 2, f"the window holds {held} tags"
    assert window.finish([1]) == (1, [])
    assert window.finish([5]) == (None, [])  # long acknowledged: never sent again
