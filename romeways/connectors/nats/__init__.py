"""The NATS JetStream connector (nats-py): a queue is a stream subject consumed by a durable
pull consumer, at least once. ``pip install 'romeways[nats]'``."""

from __future__ import annotations

from ._config import NatsConnectorConfig as NatsConnectorConfig
from ._config import NatsQueueConfig as NatsQueueConfig

try:
    from ._connector import KEY_HEADER as KEY_HEADER
    from ._connector import NatsQueueConnector as NatsQueueConnector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without nats-py
    if not (exc.name or "").startswith("nats"):
        raise
    raise ImportError(
        "the romeways NATS connector needs nats-py >= 2.16; install it with: "
        "pip install 'romeways[nats]'"
    ) from exc

__all__ = ["KEY_HEADER", "NatsConnectorConfig", "NatsQueueConfig", "NatsQueueConnector"]
