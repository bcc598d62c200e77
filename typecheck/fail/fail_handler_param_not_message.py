"""A handler whose parameter is not a Message (here the payload type itself)."""

from multiprocessing import Queue

import romeways

app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)  # expect: type-var
async def handler(message: str) -> None:
    print(message)
