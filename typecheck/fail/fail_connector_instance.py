"""A connector instance where romeways wants the class (it builds one per queue itself)."""

from multiprocessing import Queue

import romeways

connector_config = romeways.MemoryConnectorConfig(connector_name="mem")
instance = romeways.MemoryQueueConnector(
    connector_config=connector_config,
    queue_name="orders",
    config=romeways.MemoryQueueConfig(connector_name="mem", queue=Queue()),
)
romeways.App().connector_register(connector=instance, config=connector_config)  # expect: arg-type
