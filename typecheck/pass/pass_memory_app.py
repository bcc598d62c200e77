"""The quick start (README.md, docs/index.md), as a user with mypy --strict and pyright strict
writes it."""

from __future__ import annotations

import asyncio
from multiprocessing import Queue
from typing import assert_type

import romeways

queue: Queue[bytes] = Queue()
config_q = romeways.MemoryQueueConfig(
    connector_name="memory-dev1", queue=queue, max_chunk_size=5, frequency=0.5, retries=2
)
assert_type(config_q.max_chunk_size, int)
assert_type(config_q.frequency, float)


@romeways.queue_consumer(queue_name="queue.payment.done", config=config_q)
async def controller(message: romeways.Message) -> None:
    # A bare Message means Message[str]: the payload is the message's text.
    assert_type(message, romeways.Message[str])
    assert_type(message.payload, str)
    assert_type(message.rw_resend_times, int)
    if message.payload == "later":
        raise romeways.ResendException("not yet", delay=1.0)
    print(message.payload.upper())


async def call_directly() -> None:
    # The decorator hands back the function itself, type unchanged: tests can call it.
    assert_type(await controller(romeways.Message(payload="x")), None)
    assert_type(await failed(romeways.Message(payload="x")), int)


async def on_dead(letter: romeways.DeadLetter) -> None:
    assert_type(letter.reason, str)
    assert_type(letter.data, bytes)
    assert_type(letter.resend_times, int)


@romeways.queue_consumer(queue_name="queue.payment.failed", config=config_q, dead_letter=on_dead)
async def failed(message: romeways.Message[str]) -> int:
    return len(message.payload)


config_p = romeways.MemoryConnectorConfig(connector_name="memory-dev1")
romeways.connector_register(
    connector=romeways.MemoryQueueConnector, config=config_p, spawn_process=True
)

# The 0.2 wire helpers.
message = romeways.Message.from_message(b"hello")
assert_type(message, romeways.Message[str])
assert_type(message.to_json(), bytes)
assert_type(message.raise_resend_counter(), romeways.Message[str])


def main() -> None:
    assert_type(asyncio.run(romeways.start()), None)
