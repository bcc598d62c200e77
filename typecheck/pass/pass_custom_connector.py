"""Custom connectors: 0.2 style (no type arguments), typed, and structural (no base class)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import assert_type

import romeways


# romeways 0.2 code: no type arguments; the TypeVars default to the generic configs.
class LegacyConnector(romeways.AQueueConnector):
    async def on_start(self) -> None:
        self.items: deque[bytes] = deque()

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        assert_type(self.config, romeways.GenericQueueConfig)
        assert_type(self.connector_config, romeways.GenericConnectorConfig)
        await asyncio.sleep(self.config.frequency)
        return [self.items.popleft() for _ in range(min(max_chunk_size, len(self.items)))]

    async def send_messages(self, message: bytes) -> None:
        self.items.append(message)


romeways.connector_register(
    connector=LegacyConnector,
    config=romeways.GenericConnectorConfig(connector_name="legacy"),
)


@romeways.queue_consumer(
    queue_name="legacy.queue",
    config=romeways.GenericQueueConfig(connector_name="legacy"),
)
async def legacy_handler(message: romeways.Message) -> None:
    print(message.payload)


# A typed connector: its configs carry the backend's own fields.
class RedisConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    url: str


class RedisQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    stream: str
    block_ms: int = 1000


class RedisConnector(romeways.AQueueConnector[RedisConnectorConfig, RedisQueueConfig]):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        assert_type(self.config.stream, str)
        assert_type(self.connector_config.url, str)
        return []

    async def send_messages(self, message: bytes) -> None:
        return None

    async def ack(self, deliveries: Sequence[int]) -> None:
        assert_type(deliveries, Sequence[int])


app = romeways.App()
app.connector_register(
    connector=RedisConnector,
    config=RedisConnectorConfig(connector_name="redis", url="redis://localhost"),
)


@app.queue_consumer(
    queue_name="jobs", config=RedisQueueConfig(connector_name="redis", stream="jobs")
)
async def job(message: romeways.Message[dict[str, int]]) -> None:
    assert_type(message.payload, dict[str, int])


# A subclass of the connector config is still that connector's config.
class TenantRedisConfig(RedisConnectorConfig, frozen=True, kw_only=True):
    tenant: str


app.connector_register(
    connector=RedisConnector,
    config=TenantRedisConfig(connector_name="redis-t", url="redis://", tenant="t"),
)


# A structural connector: no base class, just the protocol.
class FileConnector:
    def __init__(
        self,
        *,
        connector_config: romeways.GenericConnectorConfig,
        queue_name: str,
        config: romeways.GenericQueueConfig,
    ) -> None:
        self._connector_config = connector_config
        self._config = config
        self._queue_name = queue_name

    @property
    def connector_config(self) -> romeways.GenericConnectorConfig:
        return self._connector_config

    @property
    def config(self) -> romeways.GenericQueueConfig:
        return self._config

    async def on_start(self) -> None:
        return None

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        return None

    async def resend(self, delivery: int, message: bytes) -> None:
        return None

    async def ack(self, deliveries: Sequence[int]) -> None:
        return None

    async def close(self) -> None:
        return None


app.connector_register(
    connector=FileConnector, config=romeways.GenericConnectorConfig(connector_name="file")
)


def as_connector(
    connector: romeways.Connector[romeways.GenericConnectorConfig, romeways.GenericQueueConfig],
) -> romeways.Connector:
    return connector


as_connector(
    FileConnector(
        connector_config=romeways.GenericConnectorConfig(connector_name="file"),
        queue_name="q",
        config=romeways.GenericQueueConfig(connector_name="file"),
    )
)
as_connector(
    RedisConnector(
        connector_config=RedisConnectorConfig(connector_name="redis", url="redis://"),
        queue_name="q",
        config=RedisQueueConfig(connector_name="redis", stream="s"),
    )
)
