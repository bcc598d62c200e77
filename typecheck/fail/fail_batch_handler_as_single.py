"""A batch handler registered with queue_consumer: it would get one Message, not a Batch."""

from multiprocessing import Queue

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)  # expect: type-var
async def handler(batch: romeways.Batch[Order]) -> None:
    print(len(batch))
