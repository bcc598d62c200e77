"""The Kafka connector: at-least-once consumption of one topic by a consumer group (aiokafka).

Offsets are committed by hand, per partition, only up to the first message that is not finished
yet (handled, resent or dead-lettered), so a crash at any point redelivers instead of losing.
Several processes or hosts with the same ``group_id`` share the topic's partitions.

One module per concept: ``config`` (the two configs, security validation), ``offsets`` (which
records are finished, what to commit), ``fetch_wait`` (the adaptive fetch wait), ``clients``
(starting and stopping aiokafka's clients), ``producer`` and ``connector`` (the consumer side).
"""

try:
    import aiokafka
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without aiokafka
    raise ImportError(
        "the romeways Kafka connector needs aiokafka >= 0.14; install it with: "
        "pip install 'romeways[kafka]'"
    ) from exc

from .config import (
    KafkaConnectorConfig,
    KafkaQueueConfig,
    SaslMechanism,
    SecurityProtocol,
    bootstrap_servers,
)
from .connector import KafkaQueueConnector

# The classes say they live here, where users import them from (reprs, docs, pickles).
for _public in (KafkaConnectorConfig, KafkaQueueConfig, KafkaQueueConnector):
    _public.__module__ = __name__
del _public, aiokafka  # aiokafka was imported only to say how to install it when missing

__all__ = [
    "KafkaConnectorConfig",
    "KafkaQueueConfig",
    "KafkaQueueConnector",
    "SaslMechanism",
    "SecurityProtocol",
    "bootstrap_servers",
]
