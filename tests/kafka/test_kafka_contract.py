"""The romeways connector contract (romeways.testing.ConnectorContract) on a real broker."""

from __future__ import annotations

import pytest
from broker import create_topic

from romeways.connectors.kafka import KafkaConnectorConfig, KafkaQueueConfig, KafkaQueueConnector
from romeways.testing import ConnectorContract

from .conftest import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS


class TestKafkaContract(ConnectorContract[KafkaConnectorConfig, KafkaQueueConfig]):
    connector = KafkaQueueConnector
    redelivers_unacked = True
    timeout = 90.0
    delivery_timeout = 30.0

    @pytest.fixture(autouse=True)
    def _bootstrap(self, kafka_bootstrap: str) -> None:
        self.bootstrap = kafka_bootstrap

    async def make_configs(self, queue_name: str) -> tuple[KafkaConnectorConfig, KafkaQueueConfig]:
        await create_topic(self.bootstrap, queue_name, partitions=1)
        return (
            KafkaConnectorConfig(connector_name="kafka-contract", bootstrap_server=self.bootstrap),
            KafkaQueueConfig(
                connector_name="kafka-contract",
                topic=queue_name,
                group_id=f"{queue_name}-group",
                session_timeout_ms=SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            ),
        )
