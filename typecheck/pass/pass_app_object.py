"""The explicit App: everything the module-level functions do, without global state."""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import Queue
from typing import assert_type

import romeways

app = romeways.App(shutdown_timeout=5.0, max_restarts=3, restart_window=30.0)
queue: Queue[bytes] = Queue()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, sequential=True)
seen: list[str] = []


@app.queue_consumer(queue_name="events", config=config)
async def on_event(message: romeways.Message, *, dry_run: bool = False) -> Sequence[str]:
    # Optional extra parameters are fine; the decorated function keeps them.
    if not dry_run:
        seen.append(message.payload)
    return seen


async def call_directly() -> None:
    assert_type(await on_event(romeways.Message(payload="a"), dry_run=True), Sequence[str])


app.connector_register(
    connector=romeways.MemoryQueueConnector,
    config=romeways.MemoryConnectorConfig(connector_name="mem"),
)


@app.on_startup
async def open_pool() -> None:
    seen.clear()


@app.on_shutdown
async def close_pool() -> None:
    seen.clear()


async def run() -> None:
    assert_type(await app.start(), None)
    app.stop()


# The module-level functions act on the default App.
assert_type(romeways.default_app, romeways.App[romeways.State])
