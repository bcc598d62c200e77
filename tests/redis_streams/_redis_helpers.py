"""Helpers of the Redis tests: configs and connectors over the suite's server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector

CONNECTOR = "redis-test"


def configs(
    url: str, stream: str, *, group: str | None = None, **queue_options: Any
) -> tuple[RedisConnectorConfig, RedisQueueConfig]:
    """A connector config (``socket_timeout``, ``startup_timeout``, ``socket_connect_timeout``
    go there) and a queue config of ``stream`` (group ``<stream>-g`` unless given)."""
    connector_options = {
        name: queue_options.pop(name)
        for name in ("socket_timeout", "startup_timeout", "socket_connect_timeout")
        if name in queue_options
    }
    options: dict[str, Any] = {"frequency": 0.3, **queue_options}
    return (
        RedisConnectorConfig(connector_name=CONNECTOR, url=url, **connector_options),
        RedisQueueConfig(
            connector_name=CONNECTOR, stream=stream, group=group or f"{stream}-g", **options
        ),
    )


class Consumer:
    """A connector driven the way a worker drives it: deliveries numbered from 0 in the order
    ``get_messages`` returned them."""

    def __init__(self, url: str, stream: str, **options: Any) -> None:
        connector_config, queue_config = configs(url, stream, **options)
        self.connector = RedisQueueConnector(
            connector_config=connector_config, queue_name="q", config=queue_config
        )
        self.next = 0

    async def __aenter__(self) -> Consumer:
        await self.connector.on_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connector.close()

    async def fetch(self, chunk: int = 10) -> list[tuple[int, bytes]]:
        """One get_messages: (delivery, data) pairs."""
        found = await self.connector.get_messages(chunk)
        pairs = list(enumerate(found, self.next))
        self.next += len(found)
        return pairs

    async def fetch_until(
        self, count: int, timeout: float = 10.0, chunk: int = 10
    ) -> list[tuple[int, bytes]]:
        """Fetch until ``count`` messages came."""
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(got)} of {count} messages came: {got!r}")
            found = await self.fetch(chunk)
            got += found
            if not found:
                await asyncio.sleep(0.01)
        return got
