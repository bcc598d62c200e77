"""Acknowledgements waiting to be sent: XACK (and XDEL with ``delete_acked``) in the round
trip of the next read (``read``), or in the background while a read blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import KeyT, StreamIdT

from ..support import SingleFlight, describe_exception
from ._client import is_nogroup
from ._config import RedisQueueConfig

logger = logging.getLogger("romeways")


class AckQueue:
    """Entry ids finished and not acknowledged yet. ``take()`` them into a pipeline
    (``add_to``), then hand the pipeline's results to ``done()``: those that failed come back
    for the next try, unless the group is gone. ``request()`` sends them in the background."""

    def __init__(
        self, config: RedisQueueConfig, where: str, client_of: Callable[[], Redis | None]
    ) -> None:
        self._config = config
        self._where = where
        self._client_of = client_of
        self.ids: list[bytes] = []
        self.flight = SingleFlight(self.flush, where=where, what="acknowledge")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self) -> list[bytes]:
        ids, self.ids = self.ids, []
        return ids

    def put_back(self, ids: list[bytes]) -> None:
        """Ids whose acknowledgement may not have gone through (acknowledging twice is fine)."""
        self.ids.extend(ids)

    def add_to(self, pipe: Pipeline, ids: list[bytes]) -> None:
        config = self._config
        pipe.xack(config.stream, config.group, *ids)
        if config.delete_acked:
            pipe.xdel(config.stream, *ids)

    def done(self, ids: list[bytes], results: Sequence[object]) -> None:
        for result in results:
            if isinstance(result, Exception):
                if is_nogroup(result):
                    logger.info(
                        "%s: %d acknowledgement(s) found the group gone", self._where, len(ids)
                    )
                    return
                self.put_back(ids)
                logger.warning(
                    "%s could not acknowledge %d entr%s: %s; trying again with the next read",
                    self._where,
                    len(ids),
                    "y" if len(ids) == 1 else "ies",
                    describe_exception(result),
                )
                return

    def request(self) -> None:
        self.flight.request()

    async def flush(self) -> None:
        """Send what waits, now."""
        client = self._client_of()
        if client is None or not self.ids:
            return
        ids = self.take()
        pipe = client.pipeline(transaction=False)
        self.add_to(pipe, ids)
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException:
            self.put_back(ids)
            raise
        self.done(ids, results)

    async def read(
        self,
        client: Redis,
        consumer: str,
        streams: dict[KeyT, StreamIdT],
        count: int,
        block: int | None,
    ) -> Any:
        """XREADGROUP as ``consumer``, with the acknowledgements waiting sent in the same round
        trip, before it: a worker killed while handling the chunk it reads has acknowledged the
        one before."""
        config = self._config
        if not self.ids:
            return await client.xreadgroup(
                config.group, consumer, streams, count=count, block=block
            )
        ids = self.take()
        pipe = client.pipeline(transaction=False)
        self.add_to(pipe, ids)
        pipe.xreadgroup(config.group, consumer, streams, count=count, block=block)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self.put_back(ids)
            raise
        self.done(ids, results[:-1])
        reply: Any = results[-1]
        if isinstance(reply, Exception):
            raise reply
        return reply
