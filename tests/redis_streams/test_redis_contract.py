"""The romeways connector contract (romeways.testing.ConnectorContract) on a real Redis."""

from __future__ import annotations

import pytest
from faults.redishelp import delete_streams

from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector
from romeways.testing import ConnectorContract


class TestRedisContract(ConnectorContract[RedisConnectorConfig, RedisQueueConfig]):
    connector = RedisQueueConnector
    redelivers_unacked = True
    timeout = 60.0
    delivery_timeout = 15.0

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    async def make_configs(self, queue_name: str) -> tuple[RedisConnectorConfig, RedisQueueConfig]:
        return (
            RedisConnectorConfig(connector_name="redis-contract", url=self.url),
            RedisQueueConfig(
                connector_name="redis-contract", stream=queue_name, group=f"{queue_name}-group"
            ),
        )

    async def remove_queue(
        self, connector_config: RedisConnectorConfig, queue_config: RedisQueueConfig
    ) -> None:
        await delete_streams(self.url, queue_config.stream)
