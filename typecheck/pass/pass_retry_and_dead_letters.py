"""Retry backoff, a dead-letter queue and reading dead letters, fully typed."""

import multiprocessing
from typing import assert_type

import romeways

app = romeways.App()
orders = romeways.MemoryQueueConfig(
    connector_name="mem",
    queue=multiprocessing.Queue(),
    retry_on=(TimeoutError, ConnectionError),
    retry_backoff=romeways.RetryBackoff(first=0.5, maximum=30.0),
)
dead = romeways.MemoryQueueConfig(connector_name="mem", queue=multiprocessing.Queue())


@app.queue_consumer(
    queue_name="orders",
    config=orders,
    dead_letter=romeways.DeadLetterQueue(queue_name="orders.dlq", config=dead),
)
async def handle(message: romeways.Message[str]) -> None:
    delay = romeways.context().resend_delay
    assert_type(delay, float | None)
    raise romeways.ResendException()


@app.queue_consumer(queue_name="orders.dlq", config=dead)
async def inspect(message: romeways.Message[str]) -> None:
    info = romeways.dead_letter_info()
    assert_type(info, romeways.DeadLetterInfo | None)
    if info is not None:
        assert_type(info.attempts, int)
        assert_type(info.exception_type, str | None)


async def replay() -> int:
    result = await romeways.replay_dead_letters(app, "orders.dlq")
    assert_type(result, romeways.ReplayResult)
    return result.replayed
