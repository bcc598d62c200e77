"""The Kafka connector: at-least-once consumption of one topic by a consumer group (aiokafka).

Offsets are committed by hand, per partition, only up to the first message that is not finished
yet (handled, resent or dead-lettered), so a crash at any point redelivers instead of losing.
Several processes or hosts with the same ``group_id`` share the topic's partitions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Literal, Protocol, TypeVar, cast

try:
    from aiokafka import (
        AIOKafkaConsumer,
        AIOKafkaProducer,
        ConsumerRebalanceListener,
        ConsumerRecord,
        TopicPartition,
    )
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        CommitFailedError,
        IllegalSaslStateError,
        IllegalStateError,
        KafkaConnectionError,
        KafkaError,
        KafkaTimeoutError,
        NodeNotReadyError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.helpers import create_ssl_context
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without aiokafka
    raise ImportError(
        "the romeways Kafka connector needs aiokafka >= 0.14; install it with: "
        "pip install 'romeways[kafka]'"
    ) from exc

from .._config import GenericConnectorConfig, GenericQueueConfig, require, secret_fields, shown
from .._connector import AQueueConnector
from .._errors import ConnectorError
from .._shutdown import stop_time_left

logger = logging.getLogger("romeways")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_INT32_MAX: Final = 2**31 - 1
# How long close() (its final commit and the clients' stop together) and a failed start's stop
# take at most. close() also ends by the app's shutdown deadline, but may take _CLOSE_GRACE past
# it: enough to commit what finished and stop the clients against a broker that answers.
_STOP_TIMEOUT: Final = 3.0
_CLOSE_GRACE: Final = 1.0
_MAX_STARTUP_BACKOFF: Final = 10.0
# While idle, how often the cluster is asked whether it is there, and how long it has to answer.
_PROBE_INTERVAL: Final = 5.0
_PROBE_TIMEOUT: Final = 3.0
_OUTAGE_LOG_INTERVAL: Final = 60.0


class KafkaConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """How to reach a Kafka cluster.

    ``bootstrap_server`` is ``"host:port"``, a comma-separated list of them, or a list of them.
    ``security_protocol`` is one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; SASL takes
    ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) with ``sasl_plain_username`` and
    ``sasl_plain_password``; SSL takes either ``ssl_context`` or the ``ssl_cafile``,
    ``ssl_certfile``, ``ssl_keyfile`` (and ``ssl_password`` for an encrypted key) files, or
    neither for the system's trusted CAs. ``startup_timeout`` (seconds) is how long a worker keeps
    retrying, with backoff, to reach the cluster before it fails with a ConnectorError;
    ``request_timeout_ms`` and ``retry_backoff_ms`` go to the aiokafka clients (the backoff also
    paces reconnection attempts while the broker is away).

    The ``secret_fields`` (the passwords) never appear in ``repr()``, logs or error messages.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ("sasl_plain_password", "ssl_password")

    bootstrap_server: str | list[str]
    client_id: str = "romeways"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    startup_timeout: float = 60.0
    request_timeout_ms: int = 40_000
    retry_backoff_ms: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        servers = bootstrap_servers(self.bootstrap_server)
        require(
            self,
            "bootstrap_server",
            bool(servers) and all(_looks_like_host_port(s) for s in servers),
            'give "host:port", a comma-separated list of them, or a list of them',
        )
        require(self, "client_id", bool(self.client_id.strip()), "give a non-empty client id")
        require(
            self,
            "security_protocol",
            self.security_protocol in _SECURITY_PROTOCOLS,
            f"give one of {', '.join(_SECURITY_PROTOCOLS)}",
        )
        sasl = self.security_protocol.startswith("SASL_")
        require(
            self,
            "sasl_mechanism",
            (self.sasl_mechanism in _SASL_MECHANISMS) if sasl else self.sasl_mechanism is None,
            f"give one of {', '.join(_SASL_MECHANISMS)} with a SASL_* security_protocol, "
            "and None otherwise",
        )
        # No local holds a field's value below: error trackers record the locals of a traceback.
        for name in ("sasl_plain_username", "sasl_plain_password"):
            require(
                self,
                name,
                bool(getattr(self, name)) if sasl else getattr(self, name) is None,
                "give a non-empty one with a SASL_* security_protocol, and None otherwise",
            )
        uses_ssl = self.security_protocol in ("SSL", "SASL_SSL")
        ssl_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
        for name in (*ssl_files, "ssl_context"):
            require(
                self,
                name,
                getattr(self, name) is None or (uses_ssl and getattr(self, name) != ""),
                "set it only with security_protocol SSL or SASL_SSL (and not to an empty string)",
            )
        if self.ssl_context is not None:
            require(
                self,
                "ssl_context",
                all(getattr(self, name) is None for name in ssl_files),
                "give either ssl_context or the ssl_* files, not both",
            )
        require(
            self,
            "startup_timeout",
            math.isfinite(self.startup_timeout) and self.startup_timeout > 0,
            "give a finite number of seconds > 0",
        )
        for name in ("request_timeout_ms", "retry_backoff_ms"):
            require(
                self,
                name,
                isinstance(getattr(self, name), int) and 1 <= getattr(self, name) <= _INT32_MAX,
                "give an integer number of milliseconds >= 1",
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._masked_fields())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._masked_fields())

    def _masked_fields(self) -> Iterator[tuple[str, object]]:
        for name in self.__struct_fields__:
            yield name, shown(self, name)

    def client_options(self) -> dict[str, Any]:
        """The aiokafka client keyword arguments for connection and security. Holds the
        password: never log it."""
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers(self.bootstrap_server),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context or create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                password=self.ssl_password,
            )
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            options["sasl_plain_password"] = self.sasl_plain_password
        return options


class _RedactSecrets(logging.Filter):
    """Replaces known secrets in the records of aiokafka's loggers: at DEBUG, aiokafka logs
    every request it sends, SASL PLAIN credentials included."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_REDACTOR: Final = _RedactSecrets()
_AIOKAFKA_LOGGERS: Final = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.consumer.subscription_state",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)


def _redact_in_aiokafka_logs(*secrets: object) -> None:
    """Keep these secrets (as text and as the escaped bytes aiokafka's request reprs show) out
    of aiokafka's log records."""
    for secret in secrets:
        if isinstance(secret, str) and secret:
            _REDACTOR.secrets.update(
                form
                for form in (secret, repr(secret)[1:-1], repr(secret.encode())[2:-1])
                if len(form) >= 3
            )
    if _REDACTOR.secrets:
        for name in _AIOKAFKA_LOGGERS:
            log = logging.getLogger(name)
            if _REDACTOR not in log.filters:
                log.addFilter(_REDACTOR)


def bootstrap_servers(value: str | list[str]) -> list[str]:
    """``bootstrap_server`` as a list of ``host:port`` strings."""
    # A list from untyped input (a decoded config file) may hold anything: keep the strings.
    items: list[object] = list(value.split(",") if isinstance(value, str) else value)
    return [item.strip() for item in items if isinstance(item, str) and item.strip()]


def _looks_like_host_port(server: str) -> bool:
    host, sep, port = server.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536) and " " not in host


class KafkaQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """A queue backed by a Kafka ``topic``, consumed by the consumer group ``group_id``.

    ``auto_offset_reset`` is where a group with no committed offset starts: "earliest" (the
    default, so nothing published before the group first joined is dropped) or "latest".
    The ``*_ms`` and ``*_bytes`` fields are passed to aiokafka's consumer as they are, except
    that fetches wait ``idle_fetch_max_wait_ms`` instead of ``fetch_max_wait_ms`` once a fetch
    found nothing for ``frequency`` seconds, until messages come again: a short wait while
    messages flow (brokers such as Tansu answer an empty fetch only after the wait), a longer
    one while idle (each empty fetch costs CPU). Equal values turn this off.
    ``commit_timeout`` (seconds) bounds each offset commit; a commit that times out is retried
    with the next one, and what it covered may be delivered again.
    """

    topic: str
    group_id: str
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_max_wait_ms: int = 10
    idle_fetch_max_wait_ms: int = 60
    fetch_min_bytes: int = 1
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    commit_timeout: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self,
            "topic",
            bool(_TOPIC_NAME.fullmatch(self.topic)) and self.topic not in (".", ".."),
            "give a Kafka topic name: 1 to 249 of the characters a-z A-Z 0-9 . _ -",
        )
        require(self, "group_id", bool(self.group_id.strip()), "give a non-empty group id")
        require(
            self,
            "auto_offset_reset",
            self.auto_offset_reset in ("earliest", "latest"),
            'give "earliest" or "latest"',
        )
        for name, low in (
            ("fetch_max_wait_ms", 0),
            ("idle_fetch_max_wait_ms", 0),
            ("fetch_min_bytes", 1),
            ("fetch_max_bytes", 1),
            ("max_partition_fetch_bytes", 1),
            ("session_timeout_ms", 1),
            ("heartbeat_interval_ms", 1),
            ("max_poll_interval_ms", 1),
        ):
            value = getattr(self, name)
            require(
                self,
                name,
                isinstance(value, int) and low <= value <= _INT32_MAX,
                f"give an integer >= {low}",
            )
        require(
            self,
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms < self.session_timeout_ms,
            f"must be below session_timeout_ms={self.session_timeout_ms} (a third of it is usual)",
        )
        require(
            self,
            "fetch_min_bytes",
            self.fetch_min_bytes <= self.fetch_max_bytes,
            f"must not exceed fetch_max_bytes={self.fetch_max_bytes}",
        )
        require(
            self,
            "commit_timeout",
            math.isfinite(self.commit_timeout) and self.commit_timeout > 0,
            "give a finite number of seconds > 0",
        )


class _HasOffset(Protocol):
    """What the bookkeeping needs of a record (aiokafka's ConsumerRecord has it)."""

    @property
    def offset(self) -> int: ...


_R = TypeVar("_R", bound=_HasOffset)


@dataclass(slots=True, eq=False)
class _Batch(Generic[_R]):
    """One partition's records from one fetch, handed out as deliveries ``first``,
    ``first + 1``, ... in offset order: state per fetch rather than per record, which a drain
    would pay for every message. ``start``/``end``: the offsets fetched (``end`` one past the
    last, tombstones included). ``done`` (one flag per record) is made only when the batch
    finishes in parts; once all of it is finished, ``records`` is emptied (the batch is then
    complete: only its ``end`` still matters)."""

    tp: TopicPartition
    first: int
    records: list[_R]
    start: int
    end: int
    done: bytearray | None = None
    finished: int = 0


def _first_of(batch: _Batch[Any]) -> int:
    return batch.first


def _offset_of(record: _HasOffset) -> int:
    return record.offset


class _Offsets(Generic[_R]):
    """Which fetched records are finished, per assigned partition, and so the offset each
    partition may commit: never past a record that is not finished (at-least-once). Pure
    bookkeeping, no I/O: the connector calls it and commits ``to_commit``."""

    def __init__(self) -> None:
        # Per assigned partition (a key exactly while assigned): its uncommitted batches, in
        # offset order; complete ones wait here until every batch before them is complete.
        self._queues: dict[TopicPartition, deque[_Batch[_R]]] = {}
        # The batches not complete yet, of all partitions, by ascending ``first``: a delivery's
        # batch is found by bisection.
        self._open: list[_Batch[_R]] = []
        # Per partition: the highest offset decided for commit, so an unchanged one is not
        # committed again; and the offset to commit next (removed once committed).
        self._decided: dict[TopicPartition, int] = {}
        self.to_commit: dict[TopicPartition, int] = {}

    def __contains__(self, tp: object) -> bool:
        return tp in self._queues

    def assign(self, tp: TopicPartition) -> None:
        self._queues.setdefault(tp, deque())

    def forget(self, tps: Collection[TopicPartition]) -> int:
        """Drop revoked partitions; how many of their records were handed out and not finished."""
        unfinished = 0
        for tp in tps:
            for batch in self._queues.pop(tp, ()):
                unfinished += len(batch.records) - batch.finished
            self._decided.pop(tp, None)
            self.to_commit.pop(tp, None)
        self._open = [b for b in self._open if b.tp not in tps]
        return unfinished

    def clear(self) -> None:
        self._queues.clear()
        self._open.clear()
        self._decided.clear()
        self.to_commit.clear()

    def add(self, tp: TopicPartition, first: int, records: list[_R], start: int, end: int) -> None:
        """A fetch of ``tp``'s offsets ``start`` to ``end - 1``, whose ``records`` (those with a
        value, in offset order) are handed out as deliveries ``first``, ``first + 1``, ..."""
        queue = self._queues.get(tp)
        if queue is None:  # aiokafka returns records of assigned partitions only: never drop one
            queue = self._queues[tp] = deque()
        # The first fetch starts where the group's commit is: no need to commit that again.
        self._decided.setdefault(tp, start)
        if queue and start < queue[-1].end:
            # Not after what is pending (never seen; a seek could do it): keep offset order.
            self.truncate(tp, start)
        batch = _Batch(tp, first, records, start, end)
        queue.append(batch)
        if records:
            self._open.append(batch)  # handed out in order, so ``first`` ascends

    def find(self, delivery: int) -> tuple[TopicPartition, _R] | None:
        """The partition and record of a delivery not revoked, rewound nor complete yet."""
        batches = self._open
        i = bisect_right(batches, delivery, key=_first_of) - 1
        if i < 0:
            return None
        batch = batches[i]
        index = delivery - batch.first
        return (batch.tp, batch.records[index]) if index < len(batch.records) else None

    def finish(self, deliveries: Sequence[int]) -> set[TopicPartition]:
        """Mark these deliveries finished; unknown ones (revoked or rewound meanwhile) are
        ignored. Returns the partitions touched. A step-1 ``range`` (a whole chunk) costs per
        batch, not per delivery; other sequences are split into runs of consecutive numbers."""
        touched: set[TopicPartition] = set()
        if isinstance(deliveries, range) and deliveries.step == 1:
            self._finish_run(deliveries.start, deliveries.stop, touched)
            return touched
        start = stop = 0
        for delivery in deliveries:
            if delivery != stop:
                if start != stop:
                    self._finish_run(start, stop, touched)
                start = delivery
            stop = delivery + 1
        if start != stop:
            self._finish_run(start, stop, touched)
        return touched

    def _finish_run(self, start: int, stop: int, touched: set[TopicPartition]) -> None:
        batches = self._open
        lo = i = max(0, bisect_right(batches, start, key=_first_of) - 1)
        completed = False
        while i < len(batches):
            batch = batches[i]
            if batch.first >= stop:
                break
            i += 1
            count = len(batch.records)
            a = max(start - batch.first, 0)
            b = min(stop - batch.first, count)
            if a >= b:  # ends before the run
                continue
            touched.add(batch.tp)
            if a == 0 and b == count:
                batch.finished = count
            else:
                done = batch.done
                if done is None:
                    done = batch.done = bytearray(count)
                batch.finished += b - a - done.count(1, a, b)
                done[a:b] = b"\x01" * (b - a)
            if batch.finished == count:
                batch.records, batch.done, batch.finished = [], None, 0
                completed = True
        if completed:
            batches[lo:i] = [b for b in batches[lo:i] if b.records]

    def advance(self, tps: Iterable[TopicPartition]) -> bool:
        """Move each partition's next commit to its first record not finished (or past the
        last batch when all are); True when one moved."""
        moved = False
        for tp in tps:
            queue = self._queues.get(tp)
            if not queue:
                continue
            offset = -1
            while queue and not queue[0].records:
                offset = queue.popleft().end
            if queue:
                front = queue[0]
                done = front.done
                offset = front.records[0 if done is None else done.find(0)].offset
            if offset > self._decided.get(tp, -1):
                self._decided[tp] = self.to_commit[tp] = offset
                moved = True
        return moved

    def truncate(self, tp: TopicPartition, offset: int) -> None:
        """Forget ``tp``'s records from ``offset`` on (they are to be fetched again); their
        deliveries become unknown. Records before it stay as they are."""
        queue = self._queues.get(tp)
        if not queue:
            return
        while queue and queue[-1].start >= offset:
            queue.pop()
        if queue and queue[-1].end > offset:
            batch = queue[-1]
            batch.end = offset
            keep = bisect_left(batch.records, offset, key=_offset_of)
            if keep < len(batch.records):
                batch.records = batch.records[:keep]
                if batch.done is not None:
                    batch.done = batch.done[:keep]
                    batch.finished = batch.done.count(1)
                if batch.finished == keep:
                    batch.records, batch.done, batch.finished = [], None, 0
        self._open = [b for b in self._open if b.tp != tp or (b.records and b.start < offset)]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(
        self,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned(assigned)


# Errors worth retrying at start-up: the cluster may still be coming up.
_RETRIABLE_AT_START = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, OSError)
# A refused login: no retry mends it.
_LOGIN_REFUSED = (
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
)


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
        _redact_in_aiokafka_logs(
            *(getattr(connector_config, name) for name in secret_fields(connector_config))
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._next_delivery = 0
        # What was handed out and what of it is finished, per assigned partition; and the
        # offsets to commit next.
        self._offsets: _Offsets[ConsumerRecord[bytes, bytes]] = _Offsets()
        # The fetch wait in use, and aiokafka's fetcher when it is adapted (see on_start).
        self._fetch_wait_ms = config.fetch_max_wait_ms
        self._fetcher: Any = None
        self._commit_lock = asyncio.Lock()
        # Set when a commit failed because the group moved on without this member: any commit
        # before the next assignment (the revocation's included) would land stale.
        self._fenced = False
        # Outage reporting: when the cluster last answered, and since when it has not.
        self._last_contact = time.monotonic()
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._warned_missing_topic = False
        self._background: set[asyncio.Future[None]] = set()
        # The background commit in flight, if any, and whether another was asked for meanwhile.
        self._committing: asyncio.Future[None] | None = None
        self._commit_again = False
        self._options: dict[str, Any] | None = None  # holds the password: never log it

    # -- naming, for messages -------------------------------------------------------------

    def _where(self) -> str:
        return (
            f"Kafka connector {self._connector_config.connector_name!r} "
            f"(queue {self._queue_name!r}, topic {self._config.topic!r}, "
            f"group {self._config.group_id!r})"
        )

    def _servers(self) -> str:
        return ",".join(bootstrap_servers(self._connector_config.bootstrap_server))

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
        consumer.subscribe([config.topic], listener=_Rebalance(self._on_revoked, self._on_assigned))
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
        deadline = time.monotonic() + self._connector_config.startup_timeout
        try:
            self._options = self._connector_config.client_options()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectorError(
                f"{self._where()} could not load its SSL files (ssl_cafile, ssl_certfile, "
                f"ssl_keyfile): {_describe(exc)}; check the paths and the key's ssl_password"
            ) from exc
        backoff = 0.5
        attempt = 0
        while True:
            attempt += 1
            consumer = self._new_consumer()
            producer = self._new_producer()
            try:
                remaining = max(0.1, deadline - time.monotonic())
                await asyncio.wait_for(self._start_both(consumer, producer), remaining)
            except _LOGIN_REFUSED as exc:
                await _stop_quietly(consumer, producer)
                self._offsets.clear()
                raise self._login_refused(exc) from exc
            except _RETRIABLE_AT_START as exc:
                await _stop_quietly(consumer, producer)
                self._offsets.clear()  # what a half-started consumer was assigned
                # aiokafka reports a refused login while bootstrapping as a connection error.
                refused = await self._refused_login(deadline)
                if refused is not None:
                    raise self._login_refused(refused) from refused
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectorError(
                        f"{self._where()} could not reach the Kafka cluster at {self._servers()} "
                        f"within startup_timeout={self._connector_config.startup_timeout:g}s "
                        f"({attempt} attempts; last: {_describe(exc)}); check that the broker "
                        "is running and that bootstrap_server and the security settings are "
                        "right, or raise startup_timeout"
                    ) from exc
                delay = min(backoff, remaining)
                logger.warning(
                    "%s cannot reach the Kafka cluster at %s (attempt %d: %s); "
                    "retrying in %.1fs, giving up in %.0fs",
                    self._where(),
                    self._servers(),
                    attempt,
                    _describe(exc),
                    delay,
                    remaining,
                )
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, _MAX_STARTUP_BACKOFF)
                continue
            except KafkaError as exc:
                await _stop_quietly(consumer, producer)
                self._offsets.clear()
                raise ConnectorError(
                    f"{self._where()} could not start against {self._servers()}: "
                    f"{_describe(exc)}; check the security settings (security_protocol, "
                    "sasl_*, ssl_*) and the ACLs of the topic and group"
                ) from exc
            except Exception as exc:  # aiokafka fails some handshakes with bare errors
                await _stop_quietly(consumer, producer)
                self._offsets.clear()
                raise ConnectorError(
                    f"{self._where()} could not start against {self._servers()}: "
                    f"{_describe(exc)}; check the security settings (security_protocol, "
                    "sasl_*, ssl_*): a failed authentication can end this way"
                ) from exc
            except BaseException:
                await _stop_quietly(consumer, producer)
                self._offsets.clear()
                raise
            break
        self._consumer = consumer
        self._producer = producer
        self._adapt_fetch_wait(consumer)
        logger.info(
            "%s connected to %s (client id %r)",
            self._where(),
            self._servers(),
            self._connector_config.client_id,
        )

    async def _refused_login(self, deadline: float) -> KafkaError | None:
        """After a start that could not connect over SASL: log in to each bootstrap server
        once, as the clients do, to tell a refused login (aiokafka's bootstrap reports it as
        "Unable to bootstrap") from an unreachable cluster. The first refusal, or None."""
        options = self._client_options()
        if not str(options["security_protocol"]).startswith("SASL_"):
            return None
        for server in bootstrap_servers(self._connector_config.bootstrap_server):
            host, _, port = server.rpartition(":")
            timeout = min(self._connector_config.request_timeout_ms / 1000, _PROBE_TIMEOUT)
            timeout = max(0.1, min(timeout, deadline - time.monotonic()))
            try:
                conn = await asyncio.wait_for(
                    create_conn(
                        host.strip("[]"),
                        int(port),
                        client_id=self._connector_config.client_id,
                        request_timeout_ms=self._connector_config.request_timeout_ms,
                        ssl_context=options.get("ssl_context"),
                        security_protocol=options["security_protocol"],
                        sasl_mechanism=options["sasl_mechanism"],
                        sasl_plain_username=options["sasl_plain_username"],
                        sasl_plain_password=options["sasl_plain_password"],
                    ),
                    timeout,
                )
            except _LOGIN_REFUSED as exc:
                return exc
            except (KafkaError, OSError, TimeoutError):
                continue  # this server is not reachable either: try the next
            conn.close()
            return None  # logged in: the start failed for another reason
        return None

    def _login_refused(self, exc: KafkaError) -> ConnectorError:
        config = self._connector_config
        return ConnectorError(
            f"{self._where()} could not log in to the Kafka cluster at {self._servers()}: the "
            f"broker refused the SASL {config.sasl_mechanism} login of user "
            f"{config.sasl_plain_username!r} ({_describe(exc)}); check sasl_plain_username, "
            "sasl_plain_password and sasl_mechanism (not retried: a wrong login stays wrong)"
        )

    def _adapt_fetch_wait(self, consumer: AIOKafkaConsumer) -> None:
        """Find the fetcher whose wait ``get_messages`` switches between ``fetch_max_wait_ms``
        and ``idle_fetch_max_wait_ms``; not looked for when they are equal."""
        config = self._config
        if config.idle_fetch_max_wait_ms == config.fetch_max_wait_ms:
            return
        # aiokafka has no public way to change a running consumer's fetch wait; its fetcher
        # (0.14) reads this attribute each time it builds a FetchRequest. Guarded, as private.
        fetcher = getattr(consumer, "_fetcher", None)
        if isinstance(getattr(fetcher, "_fetch_max_wait_ms", None), int):
            self._fetcher = fetcher
            return
        logger.warning(
            "%s cannot change the fetch wait of this aiokafka version's consumer: fetches wait "
            "fetch_max_wait_ms=%d ms, idle or not (idle_fetch_max_wait_ms=%d is not used)",
            self._where(),
            config.fetch_max_wait_ms,
            config.idle_fetch_max_wait_ms,
        )

    @staticmethod
    async def _start_both(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        await consumer.start()
        await producer.start()

    # -- rebalance ------------------------------------------------------------------------

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._fenced = False
        for tp in assigned:
            self._offsets.assign(tp)
        logger.info(
            "%s was assigned partitions %s",
            self._where(),
            _partitions(assigned),
        )

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is finished on the revoked partitions, then forget them, so no stale
        commit lands once another consumer owns them; their in-flight messages go uncommitted
        and the new owner delivers them again."""
        if not revoked:
            return
        await self._commit(only=revoked)
        unfinished = self._offsets.forget(revoked)
        logger.info(
            "%s had partitions %s revoked%s",
            self._where(),
            _partitions(revoked),
            f"; {unfinished} message(s) still being handled will be delivered again"
            if unfinished
            else "",
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
                f"{self._where()} could not fetch: {_describe(exc)}; retrying"
            ) from exc
        if not batch:
            # Nothing for ``frequency`` seconds: idle, so fetch with the longer wait.
            self._use_fetch_wait(self._config.idle_fetch_max_wait_ms)
            await self._probe(consumer)
            return ()
        # Set before the fetcher builds its next request (it runs after this returns).
        self._use_fetch_wait(self._config.fetch_max_wait_ms)
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
            self._commit_in_background()
        return chunk

    def _skip_tombstones(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
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

    def _use_fetch_wait(self, wait_ms: int) -> None:
        """Have the consumer's next fetches wait ``wait_ms`` at most (only when adapting)."""
        if wait_ms != self._fetch_wait_ms and self._fetcher is not None:
            self._fetcher._fetch_max_wait_ms = wait_ms
            self._fetch_wait_ms = wait_ms

    @property
    def fetch_wait_ms(self) -> int:
        """The ``fetch_max_wait_ms`` the consumer's fetches use now: ``idle_fetch_max_wait_ms``
        after a ``get_messages`` found nothing, ``fetch_max_wait_ms`` while messages come."""
        return self._fetch_wait_ms

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """While idle, ask the cluster for metadata every _PROBE_INTERVAL seconds, so that an
        outage is logged by romeways (aiokafka reconnects by itself) and its end too."""
        now = time.monotonic()
        if now - self._last_contact < _PROBE_INTERVAL:
            return
        self._last_contact = now  # paces the probes while the cluster stays away
        try:
            topics = await asyncio.wait_for(consumer.topics(), _PROBE_TIMEOUT)
        except (KafkaError, TimeoutError, OSError) as exc:
            self._lost_contact(exc)
            return
        self._in_contact()
        if self._config.topic not in topics and not self._warned_missing_topic:
            self._warned_missing_topic = True
            logger.warning(
                "%s: the topic does not exist (yet); nothing is consumed until it is created",
                self._where(),
            )

    def _lost_contact(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_logged = now
            logger.warning(
                "%s lost contact with the Kafka cluster at %s: %s; messages wait in Kafka and "
                "consuming resumes when the cluster is back",
                self._where(),
                self._servers(),
                _describe(exc),
            )
        elif now - self._outage_logged >= _OUTAGE_LOG_INTERVAL:
            self._outage_logged = now
            logger.warning(
                "%s still cannot reach the Kafka cluster at %s after %.0fs: %s",
                self._where(),
                self._servers(),
                now - self._outage_since,
                _describe(exc),
            )

    def _in_contact(self) -> None:
        now = time.monotonic()
        self._last_contact = now
        if self._outage_since is not None:
            logger.warning(
                "%s reached the Kafka cluster again after %.0fs",
                self._where(),
                now - self._outage_since,
            )
            self._outage_since = None

    def _commit_in_background(self) -> None:
        """Commit what is finished without waiting for the broker: at most one commit is in
        flight, and one asked for meanwhile is made when it ends, covering all finished by then.
        Revocation and close still commit and wait (after this one)."""
        if self._committing is not None:
            self._commit_again = True
            return
        task = asyncio.ensure_future(self._commit_until_caught_up())
        self._committing = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _commit_until_caught_up(self) -> None:
        try:
            while True:
                self._commit_again = False
                try:
                    await self._commit()
                except Exception as exc:
                    logger.warning("%s could not commit: %s", self._where(), _describe(exc))
                if not self._commit_again:
                    return
        finally:
            # Cleared in the same step as the last check, so no request falls in between.
            self._committing = None

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
            self._commit_in_background()

    async def _commit(self, *, only: Iterable[TopicPartition] | None = None) -> None:
        """Commit the finished prefixes of assigned partitions; failures are logged and the
        offsets kept for the next commit (a revocation drops them)."""
        consumer = self._consumer
        if consumer is None:
            return
        wanted = set(only) if only is not None else None
        async with self._commit_lock:
            if self._fenced:
                return
            offsets = {
                tp: offset
                for tp, offset in self._offsets.to_commit.items()
                if tp in self._offsets and (wanted is None or tp in wanted)
            }
            if not offsets:
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), self._config.commit_timeout)
            except CommitFailedError as exc:
                self._fenced = True
                logger.warning(
                    "%s could not commit offsets %s: the group is rebalancing (%s); the "
                    "partitions' next owner may deliver those messages again",
                    self._where(),
                    _offsets(offsets),
                    _describe(exc),
                )
                return
            except IllegalStateError as exc:
                logger.warning(
                    "%s did not commit offsets %s: %s",
                    self._where(),
                    _offsets(offsets),
                    _describe(exc),
                )
                for tp in offsets:
                    self._offsets.to_commit.pop(tp, None)
                return
            except (KafkaError, TimeoutError, OSError) as exc:
                logger.warning(
                    "%s could not commit offsets %s: %s; retrying with the next commit",
                    self._where(),
                    _offsets(offsets),
                    _describe(exc),
                )
                self._lost_contact(exc)
                return
            self._in_contact()
            for tp, offset in offsets.items():
                if self._offsets.to_commit.get(tp) == offset:
                    del self._offsets.to_commit[tp]
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s committed offsets %s", self._where(), _offsets(offsets))

    # -- producing ------------------------------------------------------------------------

    async def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                await _stop_quietly(producer)
                raise ConnectorError(
                    f"{self._where()} could not start its producer against {self._servers()}: "
                    f"{_describe(exc)}; check that the broker is running"
                ) from exc
            self._producer = producer
        return self._producer

    async def send_messages(self, message: bytes) -> None:
        await self._produce(message, None, (), "send a message")

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
        await self._produce(message, key, headers or (), "publish a message")

    def message_position(self, delivery: int) -> tuple[str, int, int] | None:
        """``(topic, partition, offset)`` of a delivery, for ``romeways.context()`` and the
        fields of log lines about the message."""
        found = self._offsets.find(delivery)
        if found is None:
            return None
        tp, record = found
        return tp.topic, tp.partition, record.offset

    async def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition ``(topic, partition)``: messages between this consumer's
        position and the partition's end as of the last fetch (no broker request), for the
        ``romeways_kafka_consumer_lag`` metric."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                # position() waits while the partition has no position yet: never for long here.
                position = await asyncio.wait_for(consumer.position(tp), _PROBE_TIMEOUT)
            except (KafkaError, TimeoutError):  # revoked meanwhile, or no position yet
                continue
            lags[(tp.topic, tp.partition)] = max(0, end - position)
        return lags

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
            await self._produce(message, record.key, record.headers, "resend a message")
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
            self._commit_in_background()
        try:
            consumer.seek(tp, offset)
        except (KafkaError, ValueError) as exc:
            logger.warning(
                "%s could not rewind partition %d to offset %d: %s",
                self._where(),
                tp.partition,
                offset,
                _describe(exc),
            )
            return
        logger.warning(
            "%s will deliver partition %d again from offset %d, as its resend failed",
            self._where(),
            tp.partition,
            offset,
        )

    async def _produce(
        self,
        message: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        what: str,
    ) -> None:
        producer = await self._require_producer()
        try:
            await producer.send_and_wait(
                self._config.topic, message, key=key, headers=list(headers) or None
            )
        except KafkaError as exc:
            raise ConnectorError(
                f"{self._where()} could not {what}: {_describe(exc)}; "
                "check that the broker is reachable and the topic exists"
            ) from exc

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is finished, then stop the consumer (leaving the group) and the
        producer, all by one deadline: the app's shutdown deadline when a worker closes it (see
        ``romeways._shutdown``), but at most _STOP_TIMEOUT away, and at least _CLOSE_GRACE
        away so that what finished is still committed after the handlers used all of the
        shutdown timeout. What misses the deadline is not committed (it is delivered again); a
        client still waiting on the broker then finishes stopping in the background."""
        loop = asyncio.get_running_loop()
        left = stop_time_left()
        budget = _STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, _STOP_TIMEOUT))
        deadline = loop.time() + budget
        consumer, producer = self._consumer, self._producer
        try:
            if consumer is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        if self._background:
                            await asyncio.wait(self._background)
                        await self._commit()
                except TimeoutError:
                    logger.warning(
                        "%s could not commit offsets %s in the %.1fs its close had; those "
                        "messages will be delivered again",
                        self._where(),
                        _offsets(self._offsets.to_commit) or "-",
                        budget,
                    )
        finally:
            # Also when cancelled (the drain's deadline): the clients stop all the same.
            for task in list(self._background):
                task.cancel()
            self._consumer = self._producer = None
            self._offsets.clear()
            self._fetcher = None
            self._fetch_wait_ms = self._config.fetch_max_wait_ms
            stops = _start_stopping(consumer, producer, where=self._where())
        await _wait_stopped(stops, deadline, self._where())


# Client stops that outlived the close() that started them (the broker did not answer in time):
# kept referenced until they end, bounded by the client's own request_timeout_ms.
_STOPPING: Final[set[asyncio.Task[None]]] = set()


def _start_stopping(
    *clients: AIOKafkaConsumer | AIOKafkaProducer | None, where: str | None
) -> list[asyncio.Task[None]]:
    """Start stopping the clients, each in a task of its own: a stop cut short would leave
    the client's connections and background tasks behind, so none is cancelled."""
    tasks: list[asyncio.Task[None]] = []
    for client in clients:
        if client is not None:
            task = asyncio.ensure_future(_stop_client(client, where))
            _STOPPING.add(task)
            task.add_done_callback(_STOPPING.discard)
            tasks.append(task)
    return tasks


async def _wait_stopped(
    tasks: list[asyncio.Task[None]], deadline: float, where: str | None
) -> None:
    """Wait for the client stops until ``deadline`` (loop time); the rest go on in the
    background."""
    if not tasks:
        return
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending and where is not None:
        logger.warning(
            "%s: %d Kafka client(s) did not stop by the deadline (the broker does not answer); "
            "they finish stopping in the background",
            where,
            len(pending),
        )


async def _stop_quietly(
    *clients: AIOKafkaConsumer | AIOKafkaProducer | None, where: str | None = None
) -> None:
    """Stop clients concurrently within _STOP_TIMEOUT; errors are logged, not raised."""
    deadline = asyncio.get_running_loop().time() + _STOP_TIMEOUT
    await _wait_stopped(_start_stopping(*clients, where=where), deadline, where)


async def _stop_client(client: AIOKafkaConsumer | AIOKafkaProducer, where: str | None) -> None:
    try:
        await client.stop()
    except asyncio.CancelledError as exc:
        # aiokafka's stop() can leak the cancellation of its own tasks; only a cancellation of
        # this task itself goes on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        if where is not None:
            logger.warning("%s: stopping a Kafka client was interrupted: %r", where, exc)
    except Exception as exc:
        if where is not None:
            logger.warning(
                "%s: stopping the %s failed: %s",
                where,
                "consumer" if isinstance(client, AIOKafkaConsumer) else "producer",
                _describe(exc),
            )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _partitions(tps: Iterable[TopicPartition]) -> str:
    parts = sorted(tps)
    return "[" + ", ".join(f"{tp.topic}:{tp.partition}" for tp in parts) + "]" if parts else "[]"


def _offsets(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(
        f"{tp.topic}:{tp.partition}@{offset}" for tp, offset in sorted(offsets.items())
    )
