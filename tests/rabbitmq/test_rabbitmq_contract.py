"""The romeways connector contract (romeways.testing.ConnectorContract) on the real RabbitMQ,
for a quorum queue (the default) and a classic one. Each queue has its own topic exchange bound
with "#", so a publish with a key (the contract's metadata check) routes to it."""

from __future__ import annotations

import pytest
from faults.rabbithelp import delete_exchange, delete_queue

from romeways.connectors.rabbitmq import (
    RabbitMQConnectorConfig,
    RabbitMQQueueConfig,
    RabbitMQQueueConnector,
)
from romeways.connectors.rabbitmq._config import QueueType
from romeways.testing import ConnectorContract


class TestRabbitMQQuorumContract(ConnectorContract[RabbitMQConnectorConfig, RabbitMQQueueConfig]):
    connector = RabbitMQQueueConnector
    redelivers_unacked = True
    timeout = 60.0
    delivery_timeout = 10.0
    queue_type: QueueType = "quorum"

    @pytest.fixture(autouse=True)
    def _url(self, rabbit_url: str) -> None:
        self.url = rabbit_url

    async def make_configs(
        self, queue_name: str
    ) -> tuple[RabbitMQConnectorConfig, RabbitMQQueueConfig]:
        return (
            RabbitMQConnectorConfig(connector_name="rabbit-contract", url=self.url),
            RabbitMQQueueConfig(
                connector_name="rabbit-contract",
                queue=queue_name,
                queue_type=self.queue_type,
                exchange=queue_name,
                exchange_type="topic",
                binding_keys=["#"],
            ),
        )

    async def remove_queue(
        self, connector_config: RabbitMQConnectorConfig, queue_config: RabbitMQQueueConfig
    ) -> None:
        await delete_queue(self.url, queue_config.queue)
        await delete_exchange(self.url, queue_config.exchange)


class TestRabbitMQClassicContract(TestRabbitMQQuorumContract):
    queue_type = "classic"
