"""A handler that takes no message at all."""

from multiprocessing import Queue

import romeways

app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)  # expect: type-var
async def handler() -> None:
    print("called")
