"""``RedisQueueConnector``: one stream, read by one consumer of a consumer group."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError
from ..._shutdown import stop_time_left
from ..support import Backoff, OutageLog, describe_exception, redact_secrets, start_with_retry
from ._acks import AckQueue
from ._client import UNREACHABLE, close_quietly, group_lag, is_nogroup, new_client
from ._config import RedisConnectorConfig, RedisQueueConfig
from ._entries import Entry, metadata_of, new_fields, resend_fields
from ._handouts import Handouts
from ._pending import PendingEntries
from ._startup import (
    ConsumerKey,
    check_consumer,
    connect,
    consumer_name,
    recreate_group,
    release_consumer,
    take_consumer,
    tls_of,
)

logger = logging.getLogger("romeways")

_RECONNECT: Final = Backoff(initial=0.2, maximum=2.0, jitter=0.2)
_STOP_TIMEOUT: Final = 3.0  # close() at most (and at least _CLOSE_GRACE past the app's deadline)
_CLOSE_GRACE: Final = 1.0
_LAG_MAX_AGE: Final = 1.0  # seconds a lag figure is reused
_LAG_TIMEOUT: Final = 3.0
_REDIS_LOGGERS: Final = ("redis.asyncio.connection", "redis._parsers.base", "push_response")


class RedisQueueConnector(AQueueConnector[RedisConnectorConfig, RedisQueueConfig]):
    """Consumes one stream as one consumer of the queue's group, and adds resends and published
    messages to it (XADD).

    At-least-once: an entry stays pending in the group until it is finished (handled, resent
    or dead-lettered) and acknowledged (XACK, sent with the next read). A restarted worker
    (same consumer name) reads its own pending entries first; entries pending at a consumer
    that is gone are claimed after ``claim_idle``; entries this one still holds are kept alive
    meanwhile. An entry delivered more than ``max_deliveries`` times is dead-lettered unhandled.
    """

    def __init__(
        self,
        *,
        connector_config: RedisConnectorConfig,
        queue_name: str,
        config: RedisQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        config.check_against(connector_config)
        redact_secrets(connector_config.secrets(), _REDIS_LOGGERS)
        name = connector_config.connector_name
        self._consumer = consumer_name(connector_config, config)
        self._block = config.block_seconds(connector_config.socket_timeout)
        self._where = (
            f"Redis connector {name!r} (queue {queue_name!r}, stream {config.stream!r}, "
            f"group {config.group!r}, consumer {self._consumer!r})"
        )
        self._target = connector_config.target
        self._client: Redis | None = None
        self._handouts = Handouts(config, self._where)
        # Entry ids finished and not acknowledged yet: sent with the next read, or meanwhile.
        self._acks = AckQueue(config, self._where, lambda: self._client)
        self._reading = False
        self._failures = 0
        self._retry_at = 0.0  # time.monotonic() before which the server is not asked again
        self._outage = OutageLog(self._where, self._target)
        self._keeper: asyncio.Task[None] | None = None
        self._active_key: ConsumerKey | None = None
        self._lag: tuple[float, dict[str, int]] | None = None
        self._pending = PendingEntries(
            config, self._consumer, self._where, self._held_ids, self._acks
        )

    # -- names ----------------------------------------------------------------------------

    @property
    def consumer(self) -> str:
        """This instance's consumer name in the group."""
        return self._consumer

    @property
    def block_seconds(self) -> float:
        """How long one blocking read waits at most (0: reads do not block)."""
        return self._block

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where} at {self._target}>"

    # -- start-up -------------------------------------------------------------------------

    def _new_client(self) -> Redis:
        return new_client(
            self._connector_config, tls_of(self._connector_config, self._where), self._consumer
        )

    async def on_start(self) -> None:
        """Reach the server (retrying with the kit's backoff up to ``startup_timeout``) and
        create the group at the start of the stream (MKSTREAM, id 0) unless it exists."""
        config = self._config
        key = (self._target, config.stream, config.group, self._consumer)
        check_consumer(key, self._queue_name)
        if self._client is not None:  # used for publishing before: start afresh
            await close_quietly(self._client)
            self._client = None
        tls = tls_of(self._connector_config, self._where)
        self._client = await start_with_retry(
            lambda: connect(self._connector_config, config, tls, self._consumer, self._where),
            timeout=self._connector_config.startup_timeout,
            retriable=UNREACHABLE,
            where=self._where,
            target=self._target,
        )
        take_consumer(key, self._queue_name)
        self._active_key = key
        self._keeper = asyncio.ensure_future(self._pending.keep_alive(lambda: self._client))
        if config.maxlen is not None:
            logger.warning(
                "%s trims the stream to about maxlen=%d entries on every publish and resend: "
                "entries trimmed before they are acknowledged are lost",
                self._where,
                config.maxlen,
            )
        logger.info(
            "%s connected to %s; entries idle for %gs at a consumer that is gone are claimed",
            self._where,
            self._target,
            config.claim_idle,
        )

    def _require_client(self) -> Redis:
        if self._client is None:
            raise ConnectorError(f"{self._where} is not started (or already closed)")
        return self._client

    # -- consuming ------------------------------------------------------------------------

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        client = self._require_client()
        if self._retry_at:
            wait = self._retry_at - time.monotonic()
            if wait > 0:  # reconnecting with backoff: never longer than frequency in one call
                await asyncio.sleep(min(wait, self._config.frequency))
                if time.monotonic() < self._retry_at:
                    return ()
        self._reading = True
        try:
            chunk = await self._fetch(client, max_chunk_size)
        except UNREACHABLE as exc:
            self._lost(exc)
            return ()
        except ResponseError as exc:
            if is_nogroup(exc):
                await self._recreate_group(client, exc)
                return ()
            raise ConnectorError(
                f"{self._where} could not fetch: {describe_exception(exc)}; check that the "
                "key holds a stream"
            ) from exc
        finally:
            self._reading = False
        if self._failures:
            self._reached()
        return chunk

    async def _fetch(self, client: Redis, max_chunk_size: int) -> Sequence[bytes]:
        pending = self._pending
        if pending.history is not None:
            own = await pending.next_own(client)
            if own is not None:
                return self._handouts.hand_out_counted([own[0]], [own[1]])
        if pending.claim_at <= time.monotonic():
            if self._acks:  # acknowledged first: an entry just finished is not claimed
                await self._acks.flush()
            claimed = await pending.claim(client)
            if claimed is not None:
                return self._handouts.hand_out_counted([claimed[0]], [claimed[1]])
        return await self._read_new(client, max_chunk_size)

    async def _read_new(self, client: Redis, max_chunk_size: int) -> Sequence[bytes]:
        """XREADGROUP ``>``, blocking at most ``block`` per call and ``frequency`` in all."""
        config = self._config
        streams: dict[KeyT, StreamIdT] = {config.stream: ">"}
        deadline = time.monotonic() + config.frequency
        while True:
            remaining = deadline - time.monotonic()
            block_ms = int(min(self._block, remaining) * 1000) if remaining > 0 else 0
            block = block_ms if block_ms > 0 else None  # BLOCK 0 would wait for ever
            reply = await self._acks.read(client, self._consumer, streams, max_chunk_size, block)
            if reply:
                entries: list[Entry] = reply[0][1]
                if entries:
                    return self._handouts.hand_out(entries)
            if block is None or time.monotonic() >= deadline:
                return ()

    def _held_ids(self) -> set[bytes]:
        """Entries this instance has handed out and not acknowledged yet."""
        held = self._handouts.ids()
        held.update(self._acks.ids)
        return held

    def spent_deliveries(self, first: int, count: int) -> Mapping[int, str]:
        """The deliveries of ``first`` to ``first + count - 1`` whose entries were delivered
        more often than ``max_deliveries`` allows, with why: the worker dead-letters them
        instead of handling them again (a message that kills its worker every time)."""
        return self._handouts.spent(first, count)

    # -- connection trouble ---------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        self._failures += 1
        self._outage.lost(exc)
        self._retry_at = time.monotonic() + _RECONNECT.delay(self._failures)
        # A reply lost with the connection may have given this consumer entries it never saw.
        self._pending.history = b"0"

    def _reached(self) -> None:
        self._failures = 0
        self._retry_at = 0.0
        self._outage.back()

    async def _recreate_group(self, client: Redis, exc: ResponseError) -> None:
        """The stream or the group was deleted under this consumer: create the group again at
        the start of the stream and go on."""
        try:
            await recreate_group(client, self._config, self._where, exc)
        except UNREACHABLE as lost:
            self._lost(lost)
            return
        self._pending.history = None

    # -- finishing ------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Mark deliveries finished: their entries are acknowledged (XACK, with XDEL when
        ``delete_acked``) in the round trip of the next read, or in the background while a
        read waits. The worker passes a ``range`` for a whole chunk."""
        entries = self._handouts.finish(deliveries)
        if not entries:
            return
        self._acks.put_back([entry[0] for entry in entries])
        if self._reading:
            self._acks.request()

    async def resend(self, delivery: int, message: bytes) -> None:
        """Add ``message`` to the stream and acknowledge the original in one MULTI/EXEC: both
        happen or neither. The new entry keeps the original's key and headers."""
        entry = self._handouts.get(delivery)
        if entry is None:
            logger.info(
                "%s did not resend delivery %d: its entry is not held any more (the group was "
                "created again), and the stream delivers it again",
                self._where,
                delivery,
            )
            return
        client = self._require_client()
        config = self._config
        entry_id, original = entry
        pipe = client.pipeline(transaction=True)
        pipe.xadd(
            config.stream, resend_fields(original, message), maxlen=config.maxlen, approximate=True
        )
        pipe.xack(config.stream, config.group, entry_id)
        if config.delete_acked:
            pipe.xdel(config.stream, entry_id)
        try:
            await pipe.execute()
        except RedisError as exc:
            # Not acknowledged by the worker now: forget it, and read the consumer's pending
            # entries again, which hold the original unless the transaction went through.
            self._handouts.forget(delivery)
            self._pending.history = b"0"
            if isinstance(exc, UNREACHABLE):
                self._lost(exc)
            raise ConnectorError(
                f"{self._where} could not resend a message: {describe_exception(exc)}; the "
                "original stays pending and is delivered again"
            ) from exc
        self._handouts.forget(delivery)

    # -- publishing -----------------------------------------------------------------------

    async def send_messages(self, message: bytes) -> None:
        await self._add(message, None, (), "send a message")

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """XADD ``message`` to the stream with ``key`` and ``headers`` as fields of the entry
        (``romeways.publish`` uses this); works on an instance never started."""
        await self._add(message, key, headers or (), "publish a message")

    async def _add(
        self,
        message: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        what: str,
    ) -> None:
        if self._client is None:
            self._client = self._new_client()
        fields = new_fields(message, key, headers)
        config = self._config
        try:
            await self._client.xadd(config.stream, fields, maxlen=config.maxlen, approximate=True)
        except RedisError as exc:
            raise ConnectorError(
                f"{self._where} could not {what} to {self._target}: {describe_exception(exc)}"
            ) from exc

    # -- what the worker and telemetry may ask --------------------------------------------

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        """Key and headers the entry was added with, its time (from its id), its position
        (``stream``, ``id``) and how many times the group has delivered it."""
        handouts = self._handouts
        entry = handouts.get(delivery)
        if entry is None:
            return None
        return metadata_of(entry, self._config.stream, handouts.count_of(delivery))

    async def consumer_lag(self) -> Mapping[str, int]:
        """``{stream: entries the group has not read yet}`` (Redis 7's group lag; nothing when
        the server cannot tell), refreshed at most once a second."""
        client = self._client
        if client is None:
            return {}
        now = time.monotonic()
        if self._lag is not None and now - self._lag[0] < _LAG_MAX_AGE:
            return self._lag[1]
        config = self._config
        try:
            lag = await group_lag(client, config.stream, config.group, _LAG_TIMEOUT)
        except (*UNREACHABLE, ResponseError, TimeoutError):
            return self._lag[1] if self._lag is not None else {}
        self._lag = (now, lag)
        return lag

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Send the acknowledgements still waiting, then close the connections, by the app's
        shutdown deadline (at most _STOP_TIMEOUT away, at least _CLOSE_GRACE). What is not
        acknowledged by then stays pending and is delivered again."""
        left = stop_time_left()
        budget = _STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, _STOP_TIMEOUT))
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        client = self._client
        try:
            if client is not None and (self._acks or self._acks.flight.running):
                async with asyncio.timeout(budget):
                    await self._acks.flight.wait()
                    await self._acks.flush()
        except (TimeoutError, *UNREACHABLE, ResponseError) as exc:
            logger.warning(
                "%s could not acknowledge %d entr%s at close (%s); they are delivered again",
                self._where,
                len(self._acks),
                "y" if len(self._acks) == 1 else "ies",
                describe_exception(exc),
            )
        finally:
            self._client = None
            if self._active_key is not None:
                release_consumer(self._active_key)
                self._active_key = None
            self._handouts.clear()
            self._acks.take()
            self._pending.history = b"0"
            if client is not None:
                await close_quietly(client)
