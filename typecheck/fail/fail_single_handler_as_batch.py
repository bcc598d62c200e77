"""A single-message handler registered with batch_consumer: it would get a Batch."""

from multiprocessing import Queue

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.batch_consumer(queue_name="orders", config=config)  # expect: type-var
async def handler(message: romeways.Message[Order]) -> None:
    print(message.payload.id)
