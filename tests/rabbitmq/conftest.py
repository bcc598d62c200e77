"""Fixtures of the RabbitMQ tests: the test session's own vhost on the shared broker (or
``ROMEWAYS_TEST_RABBITMQ_URL``, see ``faults/rabbithelp.py``), unique queue names deleted
afterwards, and configs with test-friendly timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faults.rabbithelp import Vhost, delete_queue, run, unique_queue

import romeways
from romeways.connectors.rabbitmq import (
    RabbitMQConnectorConfig,
    RabbitMQQueueConfig,
    RabbitMQQueueConnector,
)

CONNECTOR = "rabbit-test"


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    vhost = Vhost()
    try:
        yield vhost.url
    finally:
        vhost.close()


@pytest.fixture
def queue(rabbit_url: str) -> Iterator[str]:
    """A queue name unique to this test; the queue is deleted afterwards."""
    name = unique_queue("rq")
    yield name
    run(delete_queue(rabbit_url, name))


@pytest.fixture
def queues(rabbit_url: str) -> Iterator[Callable[[str], str]]:
    """``queues(prefix)``: more unique queue names, all deleted afterwards."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(unique_queue(prefix))
        return made[-1]

    yield make
    for name in made:
        run(delete_queue(rabbit_url, name))


def rabbit_configs(
    url: str, queue: str, *, connector: dict[str, Any] | None = None, **queue_options: Any
) -> tuple[RabbitMQConnectorConfig, RabbitMQQueueConfig]:
    """A (connector config, queue config) pair named ``rabbit-test``, quick to start and stop."""
    connector_config = RabbitMQConnectorConfig(
        connector_name=CONNECTOR, url=url, **{"startup_timeout": 10.0, **(connector or {})}
    )
    options: dict[str, Any] = {"frequency": 0.3, **queue_options}
    return connector_config, RabbitMQQueueConfig(connector_name=CONNECTOR, queue=queue, **options)


def rabbit_connector(url: str, queue: str, **queue_options: Any) -> RabbitMQQueueConnector:
    connector_config, queue_config = rabbit_configs(url, queue, **queue_options)
    return RabbitMQQueueConnector(
        connector_config=connector_config, queue_name="q", config=queue_config
    )


async def fetch(
    connector: RabbitMQQueueConnector, count: int, *, chunk: int = 10, timeout: float = 10.0
) -> list[tuple[int, bytes]]:
    """Fetch until ``count`` messages came: (delivery number, body) pairs, numbered as a
    worker numbers them (the caller's first fetch from this connector starts at 0)."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    start = getattr(connector, "_test_next", 0)
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages came: {got}"
        for data in await connector.get_messages(chunk):
            got.append((start + len(got), data))
    connector._test_next = start + len(got)  # type: ignore[attr-defined]  # test bookkeeping
    return got


async def run_app_until(
    app: romeways.App, condition: Callable[[], bool], timeout: float = 30.0
) -> None:
    """Run ``app.start()`` here until ``condition()`` holds, then stop it and wait for it."""
    task = asyncio.create_task(app.start())
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if task.done():
                task.result()
                raise AssertionError("the app stopped before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {timeout:.0f}s")
            await asyncio.sleep(0.02)
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout)
