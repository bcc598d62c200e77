"""Publishing a payload of the wrong type to a typed queue handle."""

from multiprocessing import Queue

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)
async def handle(message: romeways.Message[Order]) -> None:
    print(message.payload.id)


orders = app.publisher(handle)


async def produce() -> None:
    await romeways.publish(orders, "not an order")  # expect: arg-type
