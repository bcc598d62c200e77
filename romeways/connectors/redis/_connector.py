"""``RedisQueueConnector``: one stream, read by one consumer of a consumer group."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConfigError, ConnectorError
from ..._shutdown import stop_time_left
from ..support import (
    Backoff,
    DeliveryLedger,
    OutageLog,
    describe_exception,
    redact_secrets,
    start_with_retry,
    worker_identity,
    worker_slot,
)
from ._acks import AckQueue
from ._client import UNREACHABLE, close_quietly, is_nogroup, new_client
from ._config import RedisConnectorConfig, RedisQueueConfig
from ._entries import (
    DATA,
    Entry,
    foreign_message,
    metadata_of,
    new_fields,
    resend_fields,
)
from ._pending import PendingEntries, delivery_count
from ._startup import connect, create_group, tls_of

logger = logging.getLogger("romeways")

_RECONNECT: Final = Backoff(initial=0.2, maximum=2.0, jitter=0.2)
_STOP_TIMEOUT: Final = 3.0  # close() at most (and at least _CLOSE_GRACE past the app's deadline)
_CLOSE_GRACE: Final = 1.0
_LAG_MAX_AGE: Final = 1.0  # seconds a lag figure is reused
_LAG_TIMEOUT: Final = 3.0
_REDIS_LOGGERS: Final = ("redis.asyncio.connection", "redis._parsers.base", "push_response")
_NOTHING_SPENT: Final[Mapping[int, str]] = MappingProxyType({})

# (server, stream, group, consumer) of the instances started in this process: two queues of one
# process reading as one consumer would take each other's pending entries.
_ACTIVE: Final[dict[tuple[str, str, str, str], str]] = {}


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
        if config.consumer is None:
            self._consumer = worker_identity(name)
        else:
            host = socket.gethostname() or "localhost"
            self._consumer = config.format_consumer(name, host, worker_slot())
        self._block = config.block_seconds(connector_config.socket_timeout)
        self._where = (
            f"Redis connector {name!r} (queue {queue_name!r}, stream {config.stream!r}, "
            f"group {config.group!r}, consumer {self._consumer!r})"
        )
        self._target = connector_config.target
        self._client: Redis | None = None
        self._ledger: DeliveryLedger[Entry] = DeliveryLedger()
        # Per delivery, when not 1: how many times the group has delivered its entry; and the
        # deliveries past max_deliveries, with why (for the worker's spent_deliveries()).
        self._counts: dict[int, int] = {}
        self._spent: dict[int, str] = {}
        # Entry ids finished and not acknowledged yet: sent with the next read, or meanwhile.
        self._acks = AckQueue(config, self._where, lambda: self._client)
        self._reading = False
        # The id after which this consumer's own pending entries are read next (from a run
        # before, or lost with a connection), before new ones; None once none are left.
        self._history: bytes | None = b"0"
        self._failures = 0
        self._retry_at = 0.0  # time.monotonic() before which the server is not asked again
        self._outage = OutageLog(self._where, self._target)
        self._keeper: asyncio.Task[None] | None = None
        self._active_key: tuple[str, str, str, str] | None = None
        self._lag: tuple[float, dict[str, int]] | None = None
        self._warned_fields = False
        self._pending = PendingEntries(config, self._consumer, self._where, self._held_ids)

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
        other = _ACTIVE.get(key)
        if other is not None:
            raise ConfigError(
                f"RedisQueueConfig.consumer: queue {self._queue_name!r} would read stream "
                f"{config.stream!r} of group {config.group!r} as consumer {self._consumer!r}, "
                f"which queue {other!r} of this process reads as already; give one of them "
                "another group or consumer"
            )
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
        _ACTIVE[key] = self._queue_name
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
        if self._history is not None:
            chunk = await self._read_history(client)
            if chunk is not None:
                return chunk
        if self._pending.claim_at <= time.monotonic():
            if self._acks:  # acknowledged first: an entry just finished is not claimed
                await self._acks.flush()
            claimed = await self._pending.claim(client)
            if claimed is not None:
                return self._hand_out_counted([claimed[0]], [claimed[1]])
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
            reply = await self._read(client, streams, max_chunk_size, block)
            if reply:
                entries: list[Entry] = reply[0][1]
                if entries:
                    return self._hand_out(entries)
            if block is None or time.monotonic() >= deadline:
                return ()

    async def _read(
        self, client: Redis, streams: dict[KeyT, StreamIdT], count: int, block: int | None
    ) -> Any:
        """XREADGROUP, with the acknowledgements waiting sent in the same round trip, before
        it: a worker killed while handling the chunk it reads has acknowledged the one before."""
        config = self._config
        acks = self._acks
        if not acks:
            return await client.xreadgroup(
                config.group, self._consumer, streams, count=count, block=block
            )
        ids = acks.take()
        pipe = client.pipeline(transaction=False)
        acks.add_to(pipe, ids)
        pipe.xreadgroup(config.group, self._consumer, streams, count=count, block=block)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            acks.put_back(ids)
            raise
        acks.done(ids, results[:-1])
        reply: Any = results[-1]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _hand_out(self, entries: list[Entry]) -> list[bytes]:
        """The messages of fetched entries, numbered as deliveries in order."""
        try:
            chunk = [fields[DATA] for _, fields in entries]
        except KeyError:
            chunk = [self._message_of(entry) for entry in entries]
        self._ledger.add_all(entries)
        return chunk

    def _hand_out_counted(self, entries: list[Entry], counts: list[int]) -> list[bytes]:
        """Like ``_hand_out``, for entries delivered ``counts`` times (redeliveries): those past
        the budget are reported by ``spent_deliveries`` for the worker to dead-letter."""
        first = self._ledger.next_delivery
        chunk = self._hand_out(entries)
        limit = self._config.delivery_limit
        for delivery, count in enumerate(counts, first):
            self._counts[delivery] = count
            if count > limit:
                self._spent[delivery] = (
                    f"its entry was delivered {count} times without being finished (the "
                    "worker handling it stopped or died each time), more than the "
                    f"{limit} allowed (max_deliveries, else retries + 1)"
                )
        return chunk

    def _message_of(self, entry: Entry) -> bytes:
        entry_id, fields = entry
        data = fields.get(DATA)
        if data is not None:
            return data
        if not self._warned_fields:
            self._warned_fields = True
            logger.warning(
                "%s: entry %s has no %r field (not added by romeways?); such entries are "
                "handed over as a JSON object of their fields",
                self._where,
                entry_id.decode(),
                DATA.decode(),
            )
        return foreign_message(fields)

    def _held_ids(self) -> set[bytes]:
        """Entries this instance has handed out and not acknowledged yet."""
        held = {entry[0] for _, entry in self._ledger.items()}
        held.update(self._acks.ids)
        return held

    async def _read_history(self, client: Redis) -> list[bytes] | None:
        """The next of this consumer's pending entries it does not hold (left by a run before,
        or by a reply lost with a connection), one at a time so that each one's delivery
        count only grows when it is itself in flight; None once there are no more."""
        config = self._config
        held: set[bytes] | None = None
        while self._history is not None:
            cursor: dict[KeyT, StreamIdT] = {config.stream: self._history}
            reply = await self._read(client, cursor, 1, None)
            entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
            if not entries:
                self._history = None
                break
            entry_id, fields = entries[0]
            self._history = entry_id
            if held is None:
                held = self._held_ids()
            if entry_id in held:
                continue
            if fields is None:  # deleted from the stream while pending: nothing to deliver
                logger.info(
                    "%s: its pending entry %s was deleted from the stream; acknowledging it",
                    self._where,
                    entry_id.decode(),
                )
                self._acks.put_back([entry_id])
                continue
            count = await delivery_count(client, config, entry_id)
            return self._hand_out_counted([(entry_id, fields)], [count])
        return None

    def spent_deliveries(self, first: int, count: int) -> Mapping[int, str]:
        """The deliveries of ``first`` to ``first + count - 1`` whose entries were delivered
        more often than ``max_deliveries`` allows, with why: the worker dead-letters them
        instead of handling them again (a message that kills its worker every time)."""
        spent = self._spent
        if not spent:
            return _NOTHING_SPENT
        return {d: why for d, why in spent.items() if first <= d < first + count}

    # -- connection trouble ---------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        self._failures += 1
        self._outage.lost(exc)
        self._retry_at = time.monotonic() + _RECONNECT.delay(self._failures)
        # A reply lost with the connection may have given this consumer entries it never saw.
        self._history = b"0"

    def _reached(self) -> None:
        self._failures = 0
        self._retry_at = 0.0
        self._outage.back()

    async def _recreate_group(self, client: Redis, exc: ResponseError) -> None:
        """The stream or the group was deleted under this consumer: create the group again at
        the start of the stream and go on."""
        try:
            created = await create_group(client, self._config)
            length = await client.xlen(self._config.stream)
        except UNREACHABLE as lost:
            self._lost(lost)
            return
        except RedisError as error:
            raise ConnectorError(
                f"{self._where}: its stream or group is gone ({describe_exception(exc)}) and "
                f"creating the group again failed: {describe_exception(error)}"
            ) from error
        self._history = None
        logger.warning(
            "%s: the stream or its consumer group was deleted (%s); %s the group at the start "
            "of the stream, so the %d entr%s it holds %s delivered (again); consuming goes on",
            self._where,
            describe_exception(exc),
            "created" if created else "another consumer created",
            length,
            "y" if length == 1 else "ies",
            "is" if length == 1 else "are",
        )

    # -- finishing ------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Mark deliveries finished: their entries are acknowledged (XACK, with XDEL when
        ``delete_acked``) in the round trip of the next read, or in the background while a
        read waits. The worker passes a ``range`` for a whole chunk."""
        entries = self._ledger.pop_all(deliveries)
        if self._counts:
            for delivery in deliveries:
                self._counts.pop(delivery, None)
                self._spent.pop(delivery, None)
        if not entries:
            return
        self._acks.put_back([entry[0] for entry in entries])
        if self._reading:
            self._acks.request()

    async def resend(self, delivery: int, message: bytes) -> None:
        """Add ``message`` to the stream and acknowledge the original in one MULTI/EXEC: both
        happen or neither. The new entry keeps the original's key and headers."""
        entry = self._ledger.get(delivery)
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
            self._forget(delivery)
            self._history = b"0"
            if isinstance(exc, UNREACHABLE):
                self._lost(exc)
            raise ConnectorError(
                f"{self._where} could not resend a message: {describe_exception(exc)}; the "
                "original stays pending and is delivered again"
            ) from exc
        self._forget(delivery)

    def _forget(self, delivery: int) -> None:
        self._ledger.pop(delivery)
        self._counts.pop(delivery, None)
        self._spent.pop(delivery, None)

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
        entry = self._ledger.get(delivery)
        if entry is None:
            return None
        return metadata_of(entry, self._config.stream, self._counts.get(delivery, 1))

    async def consumer_lag(self) -> Mapping[str, int]:
        """``{stream: entries the group has not read yet}`` (Redis 7's group lag; nothing when
        the server cannot tell), refreshed at most once a second."""
        client = self._client
        if client is None:
            return {}
        now = time.monotonic()
        if self._lag is not None and now - self._lag[0] < _LAG_MAX_AGE:
            return self._lag[1]
        lag: dict[str, int] = {}
        try:
            groups = await asyncio.wait_for(client.xinfo_groups(self._config.stream), _LAG_TIMEOUT)
        except (*UNREACHABLE, ResponseError, TimeoutError):
            return self._lag[1] if self._lag is not None else {}
        for group in groups:
            if group.get("name") == self._config.group.encode() and group.get("lag") is not None:
                lag[self._config.stream] = int(group["lag"])
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
                _ACTIVE.pop(self._active_key, None)
                self._active_key = None
            self._ledger.clear()
            self._counts.clear()
            self._spent.clear()
            self._acks.take()
            self._history = b"0"
            if client is not None:
                await close_quietly(client)
