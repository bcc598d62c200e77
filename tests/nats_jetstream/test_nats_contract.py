"""The romeways connector contract (romeways.testing.ConnectorContract) on the real JetStream
server the session shares."""

from __future__ import annotations

import pytest
from faults.natshelp import delete_streams

from romeways.connectors.nats import NatsConnectorConfig, NatsQueueConfig, NatsQueueConnector
from romeways.testing import ConnectorContract

from .conftest import configs


class TestNatsContract(ConnectorContract[NatsConnectorConfig, NatsQueueConfig]):
    connector = NatsQueueConnector
    redelivers_unacked = True
    timeout = 60.0
    delivery_timeout = 15.0

    @pytest.fixture(autouse=True)
    def _url(self, nats_url: str) -> None:
        self.url = nats_url

    async def make_configs(self, queue_name: str) -> tuple[NatsConnectorConfig, NatsQueueConfig]:
        name = queue_name.replace("-", "_")
        connector, queue = configs(self.url, name, frequency=1.0)
        return connector, queue

    async def remove_queue(
        self, connector_config: NatsConnectorConfig, queue_config: NatsQueueConfig
    ) -> None:
        await delete_streams(self.url, [queue_config.stream])
