"""A connector config of another backend: MemoryQueueConnector takes a MemoryConnectorConfig."""

import romeways


class RedisConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    url: str


app = romeways.App()
redis = RedisConnectorConfig(connector_name="redis", url="redis://localhost")
app.connector_register(connector=romeways.MemoryQueueConnector, config=redis)  # expect: misc
