"""A contract test whose connector does not take the configs the contract is declared with."""

from collections.abc import Sequence

import romeways
from romeways.testing import ConnectorContract


class EchoConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    region: str


class EchoConnector(romeways.AQueueConnector[EchoConfig, romeways.GenericQueueConfig]):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        return None


class TestEcho(ConnectorContract[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]):
    connector = EchoConnector  # expect: assignment
