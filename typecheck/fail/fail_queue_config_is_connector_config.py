"""queue_consumer given a connector config where a queue config belongs."""

import romeways


@romeways.queue_consumer(
    queue_name="orders",
    config=romeways.MemoryConnectorConfig(connector_name="mem"),  # expect: arg-type
)
async def handler(message: romeways.Message) -> None:
    print(message.payload)
