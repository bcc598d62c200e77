"""The Kafka connector's consumer side: fetching, offset commits, rebalances, resends, message
metadata and lag, and closing, by one deadline."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from ..._config import secret_fields
from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError
from ..._shutdown import stop_time_left
from ..support import OutageLog, describe_exception, redact_secrets, wait_stopped
from .clients import (
    AIOKAFKA_LOGGERS,
    PROBE_TIMEOUT,
    STOP_TIMEOUT,
    start_clients,
    start_stopping_clients,
)
from .commits import Commits
from .config import KafkaConnectorConfig, KafkaQueueConfig, bootstrap_servers
from .fetch_wait import FetchWait
from .offsets import Offsets, offsets_text
from .producer import Producer

logger = logging.getLogger("romeways")

# close() (its final commit and the clients' stop together) ends by the app's shutdown deadline
# but at most STOP_TIMEOUT away, and may take _CLOSE_GRACE past it: enough to commit what
# finished and stop the clients against a broker that answers.
_CLOSE_GRACE: Final = 1.0
# While idle, how often the cluster is asked whether it is there.
_PROBE_INTERVAL: Final = 5.0

_Record = ConsumerRecord[bytes, bytes]


class KafkaQueueConnector(AQueueConnector[KafkaConnectorConfig, KafkaQueueConfig]):
    """Consumes one topic with one aiokafka consumer of the queue's group, and produces resends
    and ``send_messages`` with one producer (acks="all").

    At-least-once: auto-commit is off; each partition's committed offset only moves past
    messages that are finished, after every ``ack``, when partitions are revoked and on close.
    """

    def __init__(
        self,
        *,
        connector_config: KafkaConnectorConfig,
        queue_name: str,
        config: KafkaQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        # At DEBUG, aiokafka logs every request it sends, SASL PLAIN credentials included.
        redact_secrets(
            (getattr(connector_config, name) for name in secret_fields(connector_config)),
            AIOKAFKA_LOGGERS,
        )
        where = self._where()
        servers = ",".join(bootstrap_servers(connector_config.bootstrap_server))
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = Producer(
            self._new_producer, topic=config.topic, where=where, servers=servers
        )
        self._next_delivery = 0
        # What was handed out and what of it is finished, per assigned partition; and the
        # offsets to commit next.
        self._offsets: Offsets[_Record] = Offsets()
        self._fetch_wait = FetchWait(config.fetch_max_wait_ms, config.idle_fetch_max_wait_ms)
        # When the cluster last answered (paces the idle probes), and the outage reporting.
        self._last_contact = time.monotonic()
        self._outage = OutageLog(where, "the Kafka cluster", address=servers)
        self._commits = Commits(
            self._offsets,
            timeout=config.commit_timeout,
            where=where,
            lost=self._outage.lost,
            reached=self._in_contact,
        )
        self._warned_missing_topic = False
        self._options: dict[str, Any] | None = None  # holds the password: never log it
        self._servers = servers

    # -- naming, for messages -------------------------------------------------------------

    def _where(self) -> str:
        return (
            f"Kafka connector {self._connector_config.connector_name!r} "
            f"(queue {self._queue_name!r}, topic {self._config.topic!r}, "
            f"group {self._config.group_id!r})"
        )

    # -- start-up -------------------------------------------------------------------------

    def _new_consumer(self) -> AIOKafkaConsumer:
        config = self._config
        consumer = AIOKafkaConsumer(
            **self._client_options(),
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            fetch_min_bytes=config.fetch_min_bytes,
            fetch_max_bytes=config.fetch_max_bytes,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
        )
        consumer.subscribe([config.topic], listener=self._commits.listener())
        return consumer

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._client_options(), acks="all")

    def _client_options(self) -> dict[str, Any]:
        if self._options is None:
            self._options = self._connector_config.client_options()
        return self._options

    async def on_start(self) -> None:
        """Start the consumer (joining the group) and the producer, retrying with exponential
        backoff while the cluster is unreachable, up to ``startup_timeout`` seconds."""
        try:
            self._options = self._connector_config.client_options()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectorError(
                f"{self._where()} could not load its SSL files (ssl_cafile, ssl_certfile, "
                f"ssl_keyfile): {describe_exception(exc)}; check the paths and the key's "
                "ssl_password"
            ) from exc
        consumer, producer = await start_clients(
            self._connector_config,
            self._options,
            self._new_consumer,
            self._new_producer,
            where=self._where(),
            failed=self._offsets.clear,  # what a half-started consumer was assigned
        )
        self._consumer = self._commits.consumer = consumer
        self._producer.client = producer
        self._fetch_wait.adapt(consumer, self._where())
        logger.info(
            "%s connected to %s (client id %r)",
            self._where(),
            self._servers,
            self._connector_config.client_id,
        )

    # -- consuming ------------------------------------------------------------------------

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise ConnectorError(f"{self._where()} is not started (or already closed)")
        return self._consumer

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        consumer = self._require_consumer()
        try:
            batch = await consumer.getmany(
                timeout_ms=int(self._config.frequency * 1000), max_records=max_chunk_size
            )
        except KafkaError as exc:
            raise ConnectorError(
                f"{self._where()} could not fetch: {describe_exception(exc)}; retrying"
            ) from exc
        if not batch:
            # Nothing for ``frequency`` seconds: idle, so fetch with the longer wait.
            self._fetch_wait.use(self._fetch_wait.idle_ms)
            await self._probe(consumer)
            return ()
        # Set before the fetcher builds its next request (it runs after this returns).
        self._fetch_wait.use(self._fetch_wait.busy_ms)
        self._in_contact()
        offsets = self._offsets
        chunk: list[bytes] = []
        for tp, fetched in batch.items():
            if not fetched:
                continue
            values = [record.value for record in fetched]
            records = fetched
            # all() is the cheap test; it is also False for b"", which is a message.
            if not all(values) and None in values:
                records = self._skip_tombstones(tp, fetched)
                values = [record.value for record in records]
            first = self._next_delivery
            self._next_delivery = first + len(records)
            offsets.add(tp, first, records, fetched[0].offset, fetched[-1].offset + 1)
            chunk += cast("list[bytes]", values)  # no None left: tombstones were taken out
        # Tombstones count as finished: the commit may move past them (a batch of nothing else
        # is finished at once), or past offsets a seek dropped. Per partition, not per record.
        if offsets.advance(batch):
            # Committed in the background: nothing after getmany() may await, so a fetch
            # cancelled on shutdown never leaves messages registered but not returned.
            self._commits.request()
        return chunk

    def _skip_tombstones(self, tp: TopicPartition, records: list[_Record]) -> list[_Record]:
        """The records with a value; each tombstone (no value) is logged and counts as finished."""
        for record in records:
            if record.value is None:
                logger.info(
                    "%s skipped a tombstone (a message with no value) at partition %d offset %d",
                    self._where(),
                    tp.partition,
                    record.offset,
                )
        return [record for record in records if record.value is not None]

    @property
    def fetch_wait_ms(self) -> int:
        """The ``fetch_max_wait_ms`` the consumer's fetches use now: ``idle_fetch_max_wait_ms``
        after a ``get_messages`` found nothing, ``fetch_max_wait_ms`` while messages come."""
        return self._fetch_wait.current_ms

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """While idle, ask the cluster for metadata every _PROBE_INTERVAL seconds, so that an
        outage is logged by romeways (aiokafka reconnects by itself) and its end too."""
        now = time.monotonic()
        if now - self._last_contact < _PROBE_INTERVAL:
            return
        self._last_contact = now  # paces the probes while the cluster stays away
        try:
            topics = await asyncio.wait_for(consumer.topics(), PROBE_TIMEOUT)
        except (KafkaError, TimeoutError, OSError) as exc:
            self._outage.lost(exc)
            return
        self._in_contact()
        if self._config.topic not in topics and not self._warned_missing_topic:
            self._warned_missing_topic = True
            logger.warning(
                "%s: the topic does not exist (yet); nothing is consumed until it is created",
                self._where(),
            )

    def _in_contact(self) -> None:
        self._last_contact = time.monotonic()
        if self._outage.since is not None:
            self._outage.back()

    # -- acknowledging ----------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Mark deliveries finished and commit, in the background, what that finishes. The
        worker passes a ``range`` for a whole chunk: then the cost is per batch, not per
        message."""
        offsets = self._offsets
        touched = offsets.finish(deliveries)
        if touched:
            offsets.advance(touched)
        if touched and offsets.to_commit:
            # Not awaited: the worker goes on with the next chunk while the broker commits.
            # Revocation and close still commit and wait (after this one).
            self._commits.request()

    # -- producing ------------------------------------------------------------------------

    async def send_messages(self, message: bytes) -> None:
        await self._producer.produce(message, None, (), "send a message")

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce ``message`` to the topic with ``key`` (which picks its partition) and
        ``headers``, once the broker confirms it (``romeways.publish`` uses this). Works on an
        instance that was never started: the producer starts on first use."""
        await self._producer.produce(message, key, headers or (), "publish a message")

    async def resend(self, delivery: int, message: bytes) -> None:
        found = self._offsets.find(delivery)
        if found is None:
            logger.info(
                "%s did not resend delivery %d: its partition was revoked while it was "
                "handled, and the partition's new owner delivers the original again",
                self._where(),
                delivery,
            )
            return
        tp, record = found
        try:
            await self._producer.produce(message, record.key, record.headers, "resend a message")
        except ConnectorError:
            self._rewind(tp, record.offset)
            raise

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        """A resend failed, so the worker never acks this delivery: rather than hold the
        partition's commits behind it for good, fetch the partition again from its offset (the
        messages after it in the partition are delivered again too)."""
        consumer = self._consumer
        if consumer is None or tp not in self._offsets:
            return
        self._offsets.truncate(tp, offset)
        if self._offsets.advance((tp,)):  # what is left of the partition may be finished now
            self._commits.request()
        try:
            consumer.seek(tp, offset)
        except (KafkaError, ValueError) as exc:
            logger.warning(
                "%s could not rewind partition %d to offset %d: %s",
                self._where(),
                tp.partition,
                offset,
                describe_exception(exc),
            )
            return
        logger.warning(
            "%s will deliver partition %d again from offset %d, as its resend failed",
            self._where(),
            tp.partition,
            offset,
        )

    # -- what the worker may ask of a message ---------------------------------------------

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        """The key, headers, timestamp and position (topic, partition, offset) of a delivery
        not finished yet, for ``romeways.context()``, middleware and log fields."""
        found = self._offsets.find(delivery)
        if found is None:
            return None
        tp, record = found
        stamp = record.timestamp  # milliseconds; None or -1 in the oldest formats
        return MessageMetadata(
            key=record.key,
            headers=tuple(record.headers),
            timestamp=stamp / 1000 if stamp is not None and stamp >= 0 else None,
            position=(("topic", tp.topic), ("partition", tp.partition), ("offset", record.offset)),
        )

    async def consumer_lag(self) -> Mapping[str, int]:
        """Per assigned partition (``"topic:partition"``): messages between this consumer's
        position and the partition's end as of the last fetch (no broker request), for the
        consumer lag metric."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[str, int] = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                # position() waits while the partition has no position yet: never for long here.
                position = await asyncio.wait_for(consumer.position(tp), PROBE_TIMEOUT)
            except (KafkaError, TimeoutError):  # revoked meanwhile, or no position yet
                continue
            lags[f"{tp.topic}:{tp.partition}"] = max(0, end - position)
        return lags

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is finished, then stop the consumer (leaving the group) and the
        producer, all by one deadline: the app's shutdown deadline when a worker closes it (see
        ``romeways._shutdown``), but at most STOP_TIMEOUT away, and at least _CLOSE_GRACE
        away so that what finished is still committed after the handlers used all of the
        shutdown timeout. What misses the deadline is not committed (it is delivered again); a
        client still waiting on the broker then finishes stopping in the background."""
        loop = asyncio.get_running_loop()
        left = stop_time_left()
        budget = STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, STOP_TIMEOUT))
        deadline = loop.time() + budget
        consumer, producer = self._consumer, self._producer.client
        try:
            if consumer is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._commits.wait()
                        await self._commits.commit()
                except TimeoutError:
                    logger.warning(
                        "%s could not commit offsets %s in the %.1fs its close had; those "
                        "messages will be delivered again",
                        self._where(),
                        offsets_text(self._offsets.to_commit) or "-",
                        budget,
                    )
        finally:
            # Also when cancelled (the drain's deadline): the clients stop all the same.
            self._commits.cancel()
            self._consumer = self._commits.consumer = self._producer.client = None
            self._offsets.clear()
            self._fetch_wait.reset()
            stops = start_stopping_clients(consumer, producer, where=self._where())
        await wait_stopped(stops, deadline, where=self._where())
