"""The RabbitMQ connector: at-least-once consumption of one queue with manual acks, publisher
confirms and quorum queues (aio-pika).

- ``_config``: ``RabbitMQConnectorConfig`` (url, TLS, timeouts) and ``RabbitMQQueueConfig``
  (the queue, its type and arguments, prefetch, delivery limit, exchange and bindings).
- ``_acks``: which delivery tags of a channel may be acknowledged, and how.
- ``_broker``: connecting, declaring, naming the broker in messages.
- ``_messages``: what a delivery tells (tag, delivery count, metadata); publish properties.
- ``_link``: one consuming connection and channel, what it delivered, giving it back.
- ``_publisher``: publishing with confirms and ``mandatory`` on a connection of its own.
- ``_connector``: ``RabbitMQQueueConnector``: consuming, acking, resending, closing.
"""

from __future__ import annotations

try:
    from ._connector import RabbitMQQueueConnector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without aio-pika
    if exc.name not in ("aio_pika", "aiormq", "pamqp", "yarl"):
        raise
    raise ImportError(
        "the romeways RabbitMQ connector needs aio-pika >= 10; install it with: "
        "pip install 'romeways[rabbitmq]'"
    ) from exc

from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig, mask_url
from ._messages import delivery_count

__all__ = [
    "RabbitMQConnectorConfig",
    "RabbitMQQueueConfig",
    "RabbitMQQueueConnector",
    "delivery_count",
    "mask_url",
]
