"""A dead-letter queue that cannot be reached (D1): the source is a stream on the shared Redis,
the dead-letter queue a stream on a private redis-server that is down when the poison message
fails. The publish fails, so the original stays pending (unacknowledged) while the worker goes on
with the other messages and retries the publish with backoff; once the server is up, the dead
letter is published and only then the original acknowledged: exactly one dead letter, with its
fields, and nothing left pending on the source. A second case stops the app during the outage:
the message stays pending, so the next run gets it again (and dead-letters it: its deliveries
are spent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest

import romeways
from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig

from .redishelp import RedisServer, add_entries, client, delete_streams, pending, shared_url, unique

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed"),
]


def test_dead_letter_publish_fails_then_the_message_comes_again(tmp_path: Path) -> None:
    url = shared_url()
    source = unique("rw-fault-dlq-src")
    dlq = unique("rw-fault-dlq")
    server = RedisServer(tmp_path / "dlq-redis")  # not started yet: the dead-letter queue is down
    app = romeways.App(shutdown_timeout=5.0)
    app.connector_register(
        connector=romeways.RedisQueueConnector,
        config=RedisConnectorConfig(connector_name="src", url=url),
    )
    app.connector_register(
        connector=romeways.RedisQueueConnector,
        config=RedisConnectorConfig(
            connector_name="dead", url=server.url, socket_connect_timeout=0.5, startup_timeout=1.0
        ),
    )
    config = RedisQueueConfig(
        connector_name="src",
        stream=source,
        group=f"{source}-g",
        frequency=0.2,
        retries=0,
        claim_idle=1.0,
        dead_letter_timeout=2.0,
    )
    target = romeways.DeadLetterQueue(
        queue_name=dlq, config=RedisQueueConfig(connector_name="dead", stream=dlq, group=f"{dlq}-g")
    )
    tries: list[float] = []
    handled: list[str] = []

    @app.queue_consumer(queue_name=source, config=config, dead_letter=target)
    async def handler(message: romeways.Message[str]) -> None:
        if message.payload == "poison":
            tries.append(time.monotonic())
            raise ValueError("poison pill")
        handled.append(message.payload)

    async def scenario() -> list[tuple[bytes, dict[bytes, bytes]]]:
        await add_entries(url, source, [b"a", b"poison", b"b"])
        run = asyncio.create_task(app.start())
        try:
            while not (tries and len(handled) == 2):  # noqa: ASYNC110 - polls handler state
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            # The publish failed: the poison message is pending, nothing else is.
            assert len(await pending(url, source, f"{source}-g")) == 1
            server.start()
            while await pending(url, source, f"{source}-g"):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        finally:
            app.stop()
            await asyncio.wait_for(run, 15)
        async with client(server.url) as redis:
            entries = await redis.xrange(dlq)
        return cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)

    try:
        entries = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        server.kill()
        asyncio.run(delete_streams(url, source))
    assert sorted(handled) == ["a", "b"]
    assert len(tries) == 1  # handled once: the publish was retried, not the handler
    (_, fields), *more = entries
    assert not more, "exactly one dead letter"
    headers = romeways.DeadLetterInfo.from_headers(
        [(k.decode().removeprefix("h:"), v) for k, v in fields.items() if k != b"data"]
    )
    assert headers is not None, fields
    assert (headers.queue_name, headers.connector_name, headers.exception_type) == (
        source,
        "src",
        "ValueError",
    )
    assert headers.reason == "handler raised ValueError: poison pill"


def test_stopping_during_the_outage_leaves_the_message_for_the_next_run(tmp_path: Path) -> None:
    url = shared_url()
    source = unique("rw-fault-dlq-stop")
    dlq = unique("rw-fault-dlq-stop-dlq")
    server = RedisServer(tmp_path / "dlq-redis")
    tries: list[int] = []

    def make_app() -> romeways.App:
        app = romeways.App(shutdown_timeout=3.0)
        app.connector_register(
            connector=romeways.RedisQueueConnector,
            config=RedisConnectorConfig(connector_name="src", url=url),
        )
        app.connector_register(
            connector=romeways.RedisQueueConnector,
            config=RedisConnectorConfig(
                connector_name="dead",
                url=server.url,
                socket_connect_timeout=0.5,
                startup_timeout=1.0,
            ),
        )
        config = RedisQueueConfig(
            connector_name="src", stream=source, group=f"{source}-g", frequency=0.2, retries=0
        )
        target = romeways.DeadLetterQueue(
            queue_name=dlq, config=RedisQueueConfig(connector_name="dead", stream=dlq, group="g")
        )

        @app.queue_consumer(queue_name=source, config=config, dead_letter=target)
        async def handler(message: romeways.Message[str]) -> None:
            tries.append(1)
            raise ValueError("poison pill")

        return app

    async def run_until(app: romeways.App, done: Callable[[], Awaitable[bool]]) -> None:
        run = asyncio.create_task(app.start())
        try:
            while not await done():  # noqa: ASYNC110 - polls the servers
                await asyncio.sleep(0.1)
        finally:
            app.stop()
            await asyncio.wait_for(run, 15)

    async def tried() -> bool:
        return bool(tries)

    async def settled() -> bool:
        return not await pending(url, source, f"{source}-g")

    async def scenario() -> tuple[int, list[bytes]]:
        await add_entries(url, source, [b"poison"])
        await run_until(make_app(), tried)
        left = len(await pending(url, source, f"{source}-g"))
        server.start()
        await run_until(make_app(), settled)
        async with client(server.url) as redis:
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(dlq))
        return left, [fields[b"h:romeways-dlq-reason"] for _, fields in entries]

    try:
        left, reasons = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        server.kill()
        asyncio.run(delete_streams(url, source))
    assert left == 1  # stopped during the outage: not acknowledged
    # The next run got it again; its second delivery is past the budget of retries=0 (one
    # delivery), so it is dead-lettered without being handled again, and acknowledged.
    assert len(tries) == 1
    (reason,) = reasons
    assert b"deliver" in reason, reason
