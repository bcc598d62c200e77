"""A romeways 0.2 connector with its own __init__ that cannot take queue_name, which romeways
passes when it builds the connector."""

from collections.abc import Sequence

import romeways


class LegacyConnector(
    romeways.AQueueConnector[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]
):
    def __init__(
        self, connector_config: romeways.MemoryConnectorConfig, config: romeways.MemoryQueueConfig
    ) -> None:
        super().__init__(connector_config, config)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        pass


app = romeways.App()
memory = romeways.MemoryConnectorConfig(connector_name="mem")
app.connector_register(connector=LegacyConnector, config=memory)  # expect: arg-type
