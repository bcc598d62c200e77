"""A handle made with queue_handle(name, T) accepts only T payloads."""

from multiprocessing import Queue

import romeways

app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
counts = app.queue_handle("counts", int, config=config)


async def produce() -> None:
    await counts.publish("three")  # expect: arg-type
