"""A plain ``def`` handler: romeways awaits handlers, so it must be ``async def``."""

from multiprocessing import Queue

import romeways

app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)  # expect: type-var
def handler(message: romeways.Message) -> None:
    print(message.payload)
