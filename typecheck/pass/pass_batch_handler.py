"""Batch handlers (batch_consumer): the batch, its messages and marks are typed, no Any."""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import Queue
from typing import assert_type

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.batch_consumer(queue_name="orders", config=config)
async def handle(batch: romeways.Batch[Order]) -> None:
    assert_type(len(batch), int)
    assert_type(batch[0], romeways.Message[Order])
    assert_type(batch[1:], Sequence[romeways.Message[Order]])
    assert_type(batch.payloads, list[Order])
    for message in batch:
        assert_type(message, romeways.Message[Order])
        assert_type(message.payload, Order)
        assert_type(batch.context(message), romeways.MessageContext)
        if message.payload.id < 0:
            batch.dead_letter(message, "negative id")
        elif message.attempt == 1:
            batch.resend(message, delay=1.0)
    assert_type(romeways.context().batch_size, int | None)


@romeways.batch_consumer(queue_name="texts", config=config)
async def handle_texts(batch: romeways.Batch) -> None:
    assert_type(batch[0].payload, str)  # a bare Batch is Batch[str], as Message is


def kept() -> romeways.AsyncBatchHandler:
    # A batch handler kept in a variable: AsyncBatchHandler is what batch_consumer takes.
    return handle
