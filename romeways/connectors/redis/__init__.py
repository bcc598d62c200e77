"""The Redis Streams connector: at-least-once consumption of one stream by a consumer group
(redis-py's asyncio client with the hiredis parser).

``pip install 'romeways[redis]'``. See ``RedisQueueConnector`` for the delivery rules and the
docs/connectors/redis.md for the whole story.
"""

from __future__ import annotations

try:
    from ._connector import RedisQueueConnector
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess without redis
    if exc.name not in ("redis", "redis.asyncio"):
        raise
    raise ImportError(
        "the romeways Redis connector needs redis-py >= 8 with hiredis; install it with: "
        "pip install 'romeways[redis]'"
    ) from exc

from ._config import RedisConnectorConfig, RedisQueueConfig

__all__ = ["RedisConnectorConfig", "RedisQueueConfig", "RedisQueueConnector"]
