"""A typed custom connector given the generic config instead of its own config class."""

from collections.abc import Sequence

import romeways


class RedisConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    url: str


class RedisQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    stream: str


class RedisConnector(romeways.AQueueConnector[RedisConnectorConfig, RedisQueueConfig]):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        return None


generic = romeways.GenericConnectorConfig(connector_name="redis")
romeways.App().connector_register(connector=RedisConnector, config=generic)  # expect: misc
