"""queue_consumer given a connector config where a queue config belongs."""

import romeways

connector_config = romeways.MemoryConnectorConfig(connector_name="mem")


@romeways.queue_consumer(queue_name="orders", config=connector_config)  # expect: arg-type
async def handler(message: romeways.Message) -> None:
    print(message.payload)
