"""A handler with more than one required parameter: romeways passes only the message."""

from multiprocessing import Queue

import romeways

app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)  # expect: type-var
async def handler(message: romeways.Message, db: object) -> None:
    print(message.payload, db)
