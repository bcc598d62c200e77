"""The connector contract: checks any connector class against what romeways relies on.

A connector author subclasses ``ConnectorContract`` in a pytest module, names the subclass
``Test...``, sets ``connector`` and writes ``make_configs``; pytest then runs a ``test_<name>``
per check against the real backend (the checks are the ``check_<name>`` methods marked
``@_contract_check``; ``CONTRACT_CHECKS`` and the ``test_*`` methods are made from them)::

    class TestRedisConnector(ConnectorContract[RedisConnectorConfig, RedisQueueConfig]):
        connector = RedisConnector

        async def make_configs(self, queue_name):
            return (
                RedisConnectorConfig(connector_name="redis", url=URL),
                RedisQueueConfig(connector_name="redis", stream=queue_name),
            )

Without pytest, ``await check_connector(RedisConnector, make_configs)`` runs the same checks.

Each check gets fresh queues from ``make_configs`` (one call per queue, with a unique queue
name) and may change the generic queue fields (``frequency``, ``max_chunk_size``, ``retries``,
``sequential``, ``max_concurrency``) on the config it returns. Messages go in through the
connector's own ``send_messages``. A failed guarantee raises ``ContractError`` saying which one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, cast

import msgspec

from .._app import App
from .._batch import Batch
from .._config import GenericQueueConfig
from .._connector import (
    Connector,
    ConnectorConfigT,
    ConnectorFactory,
    MessageMetadata,
    ProvidesMetadata,
    Publisher,
    QueueConfigT,
    ReportsLag,
    capabilities,
    config_types,
    in_process_only,
    missing_methods,
    takes_queue_name,
)
from .._dead_letters import (
    DeadLetterEnvelope,
    DeadLetterInfo,
    DeadLetterQueue,
    ReplayResult,
    dead_letter_info,
    replay_dead_letters,
)
from .._errors import RegistrationError, ResendException
from .._message import Message
from .._retry import RetryBackoff
from .._route import DeadLetter
from ..connectors.support import DeliveryLedger
from ._recording import Acked, Closed, ConnectorEvent, Fetched, RecordingConnector, Resent, Started

_REGISTRY: list[str] = []
_Check = TypeVar("_Check", bound=Callable[..., Awaitable[None]])


def _contract_check(method: _Check) -> _Check:
    """Make ``check_<name>`` a contract check: in ``CONTRACT_CHECKS`` (in the order defined),
    run by ``check_connector`` and as ``test_<name>`` under pytest."""
    _REGISTRY.append(method.__name__.removeprefix("check_"))
    return method


class _DoesNotApply(Exception):
    """Raised by a check that does not apply to this connector (an optional capability it
    does not have); the check then passes, and pytest reports it skipped with this reason."""


# The share of a connector's wait during which the event loop may stand still (a blocking
# wait stands it still all along; a loaded machine now and then for a moment).
_LOOP_STALL_LIMIT = 0.5


class ContractError(AssertionError):
    """A connector broke one of the guarantees romeways relies on; the message says which."""


def _expect(condition: bool, guarantee: str, detail: str = "") -> None:
    if not condition:
        raise ContractError(f"{guarantee}" + (f": {detail}" if detail else ""))


@dataclass
class _Opened(Generic[ConnectorConfigT, QueueConfigT]):
    """A started connector instance and the deliveries it has handed out (numbered as a worker
    numbers them; each one's message until acked)."""

    connector: Connector[ConnectorConfigT, QueueConfigT]
    queue_config: GenericQueueConfig
    deliveries: DeliveryLedger[bytes] = field(default_factory=DeliveryLedger[bytes])
    chunks: list[int] = field(default_factory=list[int])
    closed: bool = False

    async def ack(self, deliveries: Sequence[int]) -> None:
        self.deliveries.pop_all(deliveries)
        await self.connector.ack(deliveries)


class ConnectorContract(Generic[ConnectorConfigT, QueueConfigT]):
    """Contract tests for one connector class; subclass it as ``Test<Something>``.

    Set ``connector`` to the connector class and implement ``make_configs``. Class attributes
    tune the checks to the backend:

    - ``redelivers_unacked``: True for at-least-once connectors (a message fetched but never
      acked is delivered again to the next instance); False for at-most-once ones like the
      memory connector. Either way an acked message must never come back.
    - ``timeout``: the bound, in seconds, on each check.
    - ``slack``: timing tolerance, in seconds, over the waits the protocol promises.
    - ``delivery_timeout``: how long messages sent may take to show up in ``get_messages``
      (a Kafka consumer first has to join its group).
    """

    connector: ConnectorFactory[ConnectorConfigT, QueueConfigT]
    redelivers_unacked: bool = True
    timeout: float = 60.0
    slack: float = 1.0
    delivery_timeout: float = 20.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check ``connector`` when the subclass is made, as ``connector_register`` would: a
        connector class, taking the configs the contract is declared with."""
        super().__init_subclass__(**kwargs)
        connector: object = cls.__dict__.get("connector")
        if connector is None:
            return
        where = f"{cls.__qualname__}.connector = {getattr(connector, '__name__', connector)}"
        if not isinstance(connector, type):
            raise RegistrationError(f"{where}: give the connector class itself")
        missing = missing_methods(connector)
        if missing:
            raise RegistrationError(
                f"{where}: it does not implement the connector protocol; missing or not "
                f"'async def': {', '.join(missing)}"
            )
        if not takes_queue_name(connector):
            raise RegistrationError(
                f"{where}: it does not take queue_name, which romeways passes when it builds a "
                "connector; give its __init__ 'queue_name: str | None = None'"
            )
        declared = next(
            (
                typing.get_args(base)
                for klass in cls.__mro__
                for base in klass.__dict__.get("__orig_bases__", ())
                if typing.get_origin(base) is ConnectorContract
            ),
            (),
        )
        if len(declared) != 2 or not all(isinstance(d, type) for d in declared):
            return
        kinds = ("connector", "queue")
        for given, takes, what in zip(declared, config_types(connector), kinds, strict=True):
            if not issubclass(given, takes):
                raise RegistrationError(
                    f"{where}: {connector.__name__} takes {takes.__name__} as its {what} "
                    f"config, but {cls.__qualname__} is a contract for {given.__name__}"
                )

    async def make_configs(self, queue_name: str) -> tuple[ConnectorConfigT, QueueConfigT]:
        """A connector config and the config of a new, empty queue named ``queue_name`` (create
        the backend's topic, table or file here). Called once per queue a check uses."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_configs()")

    async def remove_queue(
        self, connector_config: ConnectorConfigT, queue_config: QueueConfigT
    ) -> None:
        """Clean up a queue ``make_configs`` made, once its check is over (default: nothing)."""

    # -- running a check -----------------------------------------------------------------

    def run_check(self, name: str) -> str | None:
        """Run ``check_<name>`` in a new event loop, bounded by ``timeout``; None, or why the
        check does not apply to this connector."""
        return asyncio.run(self.check(name))

    async def check(self, name: str) -> str | None:
        """Await ``check_<name>`` bounded by ``timeout``, closing whatever it left open; None,
        or why the check does not apply to this connector."""
        if name not in CONTRACT_CHECKS:
            raise ValueError(f"unknown check {name!r}; the checks are {', '.join(CONTRACT_CHECKS)}")
        method: Callable[[], Awaitable[None]] = getattr(self, f"check_{name}")
        self._opened: list[_Opened[ConnectorConfigT, QueueConfigT]] = []
        self._queues: list[tuple[ConnectorConfigT, QueueConfigT]] = []
        try:
            async with asyncio.timeout(self.timeout):
                await method()
        except _DoesNotApply as moot:
            return str(moot)
        except TimeoutError as exc:
            raise ContractError(f"check {name!r} did not finish within {self.timeout}s") from exc
        finally:
            for opened in self._opened:
                if not opened.closed:
                    with contextlib.suppress(Exception):
                        await opened.connector.close()
            for connector_config, queue_config in self._queues:
                await self.remove_queue(connector_config, queue_config)
        return None

    # -- helpers ----------------------------------------------------------------------------

    async def new_queue(
        self, check: str, **fields: Any
    ) -> tuple[str, ConnectorConfigT, QueueConfigT]:
        """A fresh queue: its name, the connector config and its queue config with ``fields``
        (generic queue fields such as frequency) replaced."""
        queue_name = f"rw-contract-{check.replace('_', '-')}-{uuid.uuid4().hex[:10]}"
        connector_config, queue_config = await self.make_configs(queue_name)
        self._queues.append((connector_config, queue_config))
        return queue_name, connector_config, msgspec.structs.replace(queue_config, **fields)

    async def open(
        self, queue_name: str, connector_config: ConnectorConfigT, queue_config: QueueConfigT
    ) -> _Opened[ConnectorConfigT, QueueConfigT]:
        """Build a connector instance the way a worker does and start it."""
        connector = self.connector(
            connector_config=connector_config, queue_name=queue_name, config=queue_config
        )
        opened = _Opened(connector, queue_config)
        self._opened.append(opened)
        await connector.on_start()
        return opened

    def publisher(
        self, queue_name: str, connector_config: ConnectorConfigT, queue_config: QueueConfigT
    ) -> _Opened[ConnectorConfigT, QueueConfigT]:
        """An instance only sent through, never started, as ``romeways.publish`` uses one."""
        connector = self.connector(
            connector_config=connector_config, queue_name=queue_name, config=queue_config
        )
        opened = _Opened(connector, queue_config)
        self._opened.append(opened)
        return opened

    async def close(self, opened: _Opened[ConnectorConfigT, QueueConfigT]) -> None:
        opened.closed = True
        await opened.connector.close()

    async def fetch(
        self,
        opened: _Opened[ConnectorConfigT, QueueConfigT],
        until: Callable[[list[bytes]], bool],
        what: str,
    ) -> list[tuple[int, bytes]]:
        """Fetch chunks (checking each against max_chunk_size) until ``until(all fetched)``;
        (delivery number, message) pairs, also kept in ``opened.deliveries`` until acked.
        ContractError after ``delivery_timeout``."""
        limit = opened.queue_config.max_chunk_size
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + self.delivery_timeout
        while not until([data for _, data in got]):
            _expect(
                time.monotonic() < deadline,
                f"messages sent show up in get_messages within {self.delivery_timeout}s",
                f"waiting for {what}, got {[data for _, data in got]!r}",
            )
            chunk = await opened.connector.get_messages(limit)
            _expect(
                len(chunk) <= limit,
                "get_messages(max_chunk_size) returns at most max_chunk_size messages",
                f"asked for {limit}, got {len(chunk)}",
            )
            for data in chunk:
                _expect(
                    isinstance(cast(object, data), bytes),  # for connectors not type-checked
                    "get_messages returns bytes",
                    f"got a {type(data).__name__}",
                )
                got.append((opened.deliveries.add(data), data))
            if chunk:
                opened.chunks.append(len(chunk))
            else:
                await asyncio.sleep(0.01)  # frequency=0 returns at once: let the loop run
        return got

    async def fetch_through_sentinel(
        self, opened: _Opened[ConnectorConfigT, QueueConfigT], what: str
    ) -> list[tuple[int, bytes]]:
        """Send a sentinel and fetch up to it: by FIFO, everything still on the queue before it
        comes first. The pairs before the sentinel (the sentinel itself is acked)."""
        sentinel = f"sentinel-{uuid.uuid4().hex[:8]}".encode()
        await opened.connector.send_messages(sentinel)
        got = await self.fetch(opened, lambda seen: sentinel in seen, what)
        _expect(
            got[-1][1] == sentinel,
            "FIFO within a queue",
            f"messages came after a later sentinel: {[d for _, d in got]!r}",
        )
        await opened.ack([got[-1][0]])
        return got[:-1]

    # -- the checks -------------------------------------------------------------------------

    @_contract_check
    async def check_protocol(self) -> None:
        """The class implements the connector protocol; romeways accepts it with these configs;
        an instance reports the configs it was built with."""
        queue_name, connector_config, queue_config = await self.new_queue("protocol")
        app = App()
        app.connector_register(connector=self.connector, config=connector_config)

        @app.queue_consumer(queue_name=queue_name, config=queue_config)
        async def handler(message: Message) -> None:
            return None

        opened = await self.open(queue_name, connector_config, queue_config)
        connector = cast(object, opened.connector)
        _expect(
            isinstance(connector, Connector),
            "an instance implements romeways.Connector",
            f"{type(connector).__name__} misses part of the protocol",
        )
        _expect(
            opened.connector.connector_config == connector_config,
            "connector_config is the connector config the instance was built with",
        )
        _expect(
            opened.connector.config == queue_config,
            "config is the queue config the instance was built with",
        )
        await self.close(opened)

    @_contract_check
    async def check_send_before_on_start(self) -> None:
        """``romeways.publish`` sends through an instance it never starts: send_messages
        works without on_start() (starting what it needs lazily), and close() then too."""
        queue_name, cc, qc = await self.new_queue("send", frequency=0.5)
        publisher = self.publisher(queue_name, cc, qc)
        await publisher.connector.send_messages(b"published")
        await self.close(publisher)
        consumer = await self.open(queue_name, cc, qc)
        got = await self.fetch(consumer, lambda seen: bool(seen), "the published message")
        _expect(
            [data for _, data in got] == [b"published"],
            "a message sent before on_start() is delivered",
            repr(got),
        )
        await consumer.ack([d for d, _ in got])
        await self.close(consumer)

    @_contract_check
    async def check_fifo_and_chunk_limit(self) -> None:
        """Messages come back in the order they were sent, in chunks of at most
        max_chunk_size, each exactly once."""
        for limit, count in ((4, 13), (1, 3)):
            queue_name, cc, qc = await self.new_queue("fifo", max_chunk_size=limit, frequency=0.5)
            opened = await self.open(queue_name, cc, qc)
            sent = [f"fifo-{limit}-{i}".encode() for i in range(count)]
            for data in sent:
                await opened.connector.send_messages(data)
            got = await self.fetch(opened, _at_least(count), "the sent messages")
            _expect(
                [data for _, data in got] == sent,
                "FIFO within a queue, each message once",
                f"sent {sent!r}, got {[d for _, d in got]!r}",
            )
            _expect(
                max(opened.chunks) <= limit,
                "chunks respect max_chunk_size",
                f"chunk sizes {opened.chunks} with max_chunk_size={limit}",
            )
            await opened.ack([delivery for delivery, _ in got])
            rest = await self.fetch_through_sentinel(opened, "a sentinel after the acked ones")
            _expect(not rest, "each message is delivered once", f"again: {rest!r}")
            await self.close(opened)

    @_contract_check
    async def check_waits_at_most_frequency(self) -> None:
        """On an empty queue get_messages returns an empty chunk within frequency seconds
        (at once for frequency=0), and the event loop keeps running while it waits."""
        for frequency in (0.4, 0.0):
            queue_name, cc, qc = await self.new_queue("wait", frequency=frequency)
            opened = await self.open(queue_name, cc, qc)
            # Warm up (a Kafka consumer joins its group on the first fetches).
            await self.fetch_through_sentinel(opened, "a sentinel on an empty queue")
            stall = _LoopWatch()
            async with stall:
                for _ in range(3):
                    started = time.monotonic()
                    chunk = await opened.connector.get_messages(qc.max_chunk_size)
                    took = time.monotonic() - started
                    _expect(not chunk, "an empty queue yields an empty chunk", repr(chunk))
                    _expect(
                        took <= frequency + self.slack,
                        "get_messages waits at most frequency seconds",
                        f"took {took:.2f}s with frequency={frequency}",
                    )
            _expect(
                frequency == 0 or stall.stalled <= _LOOP_STALL_LIMIT * stall.elapsed,
                "get_messages does not block the event loop while it waits",
                f"the loop stood still for {stall.stalled:.2f}s of {stall.elapsed:.2f}s",
            )
            await self.close(opened)

    @_contract_check
    async def check_wakes_for_new_message(self) -> None:
        """A message sent while get_messages waits is returned without waiting out the
        whole frequency."""
        frequency = 2.0
        queue_name, cc, qc = await self.new_queue("wake", frequency=frequency)
        opened = await self.open(queue_name, cc, qc)
        await self.fetch_through_sentinel(opened, "a sentinel on an empty queue")

        async def send_later() -> float:
            await asyncio.sleep(0.3)
            await opened.connector.send_messages(b"wake-up")
            return time.monotonic()

        sender = asyncio.create_task(send_later())
        got = await self.fetch(opened, lambda seen: b"wake-up" in seen, "the message sent late")
        latency = time.monotonic() - await sender
        _expect(
            latency <= frequency / 2,
            "get_messages returns as soon as a message arrives",
            f"it took {latency:.2f}s to see a message sent mid-wait (frequency={frequency})",
        )
        await opened.ack([d for d, _ in got])
        await self.close(opened)

    @_contract_check
    async def check_ack_and_redelivery(self) -> None:
        """Acked messages never come back; unacked ones come back to the next instance (at
        least once), in order, or never (at most once)."""
        queue_name, cc, qc = await self.new_queue("ack", max_chunk_size=10, frequency=0.5)
        first = await self.open(queue_name, cc, qc)
        sent = [f"ack-{i}".encode() for i in range(6)]
        for data in sent:
            await first.connector.send_messages(data)
        got = await self.fetch(first, lambda seen: len(seen) >= len(sent), "the sent messages")
        _expect([d for _, d in got] == sent, "FIFO within a queue", repr(got))
        await first.ack([delivery for delivery, _ in got[:3]])
        await self.close(first)

        second = await self.open(queue_name, cc, qc)
        again = [data for _, data in await self.fetch_through_sentinel(second, "a sentinel")]
        expected = sent[3:] if self.redelivers_unacked else []
        _expect(
            not set(again) & set(sent[:3]),
            "an acked message is never delivered again",
            f"a new instance got {again!r} after {sent[:3]!r} were acked",
        )
        _expect(
            again == expected,
            "unacked messages are delivered again, in order"
            if self.redelivers_unacked
            else "an at-most-once connector does not deliver fetched messages again",
            f"a new instance got {again!r}, expected {expected!r}",
        )
        await self.close(second)

    @_contract_check
    async def check_resend_with_counter(self) -> None:
        """resend() puts the envelope with the raised counter back on the queue; once the
        original is acked only the envelope remains, and it decodes with the counter."""
        queue_name, cc, qc = await self.new_queue("resend", frequency=0.5)
        opened = await self.open(queue_name, cc, qc)
        await opened.connector.send_messages(b"resend-me")
        expected = b"resend-me"
        for what in ("the sent message", "the resent message"):
            ((delivery, data),) = await self.fetch(opened, lambda seen: bool(seen), what)
            _expect(data == expected, "a resent message comes back as sent", repr(data))
            envelope = Message.from_message(data).raise_resend_counter().to_json()
            await opened.connector.resend(delivery, envelope)
            await opened.ack([delivery])
            expected = envelope
        ((delivery, data),) = await self.fetch(
            opened, lambda seen: bool(seen), "the message resent twice"
        )
        _expect(data == expected, "resend puts the envelope back unchanged", repr(data))
        message = Message.from_message(data)
        _expect(
            (message.payload, message.rw_resend_times) == ("resend-me", 2),
            "the resend counter survives the round trip",
            repr(message),
        )
        await opened.ack([delivery])
        await self.close(opened)
        fresh = await self.open(queue_name, cc, qc)
        rest = await self.fetch_through_sentinel(fresh, "a sentinel after the resends")
        _expect(not rest, "a resent and acked original is not delivered again", repr(rest))
        await self.close(fresh)

    @_contract_check
    async def check_app_run_with_resend_and_shutdown(self) -> None:
        """A real ``App.start()`` over the connector: every message handled in order, resends
        counted up to ``retries`` then dead-lettered, every finished message acked after it
        finished, ``close()`` once after the last ack, and nothing left on the queue."""
        queue_name, cc, qc = await self.new_queue(
            "run", max_chunk_size=3, frequency=0.2, retries=2, sequential=True
        )
        producer = self.publisher(queue_name, cc, qc)  # not started: joins no group
        plain = [f"m{i}" for i in range(7)]
        sent = [*plain[:3], "resend-once", *plain[3:], "always-resend"]
        for payload in sent:
            await producer.connector.send_messages(payload.encode())
        await self.close(producer)

        log: list[_Entry] = []
        done = asyncio.Event()
        app = App(shutdown_timeout=5.0)
        app.connector_register(connector=_recording(self.connector, log), config=cc)

        async def dead_letter(letter: DeadLetter) -> None:
            log.append(_Dead(letter.data, letter.resend_times))
            done.set()

        @app.queue_consumer(queue_name=queue_name, config=qc, dead_letter=dead_letter)
        async def handler(message: Message) -> None:
            log.append(_Handling(message.payload, message.rw_resend_times))
            await asyncio.sleep(0)
            if message.payload == "always-resend" or (
                message.payload == "resend-once" and message.rw_resend_times == 0
            ):
                log.append(_Raised(message.payload, message.rw_resend_times))
                raise ResendException("contract check")
            log.append(_Handled(message.payload, message.rw_resend_times))

        run = asyncio.create_task(app.start())
        try:
            await asyncio.wait_for(done.wait(), self.delivery_timeout)
            # Let the worker ack the dead-lettered message before asking it to stop.
            await _wait_for(lambda: _unacked(log) == [], self.delivery_timeout)
        except TimeoutError:
            raise ContractError(
                "an App run finishes every message",
                f"after {self.delivery_timeout}s the run had only done {log!r}",
            ) from None
        finally:
            app.stop()
            stop_started = time.monotonic()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)
        stop_took = time.monotonic() - stop_started
        _expect(
            stop_took <= app.shutdown_timeout + self.slack,
            "an idle worker shuts down promptly (fetch returns within frequency, close is quick)",
            f"start() took {stop_took:.2f}s to return after stop()",
        )

        handled = [entry.payload for entry in log if isinstance(entry, _Handled)]
        _expect(
            [p for p in handled if p in plain] == plain,
            "FIFO within a queue (sequential worker)",
            f"handled {handled!r}",
        )
        _expect(
            _Handled("resend-once", 1) in log,
            "a resent message comes back with its counter raised",
            repr(log),
        )
        tries = [
            entry.resend_times
            for entry in log
            if isinstance(entry, _Handling) and entry.payload == "always-resend"
        ]
        _expect(tries == [0, 1, 2], "resends count up to retries", f"attempts {tries!r}")
        dead = [entry for entry in log if isinstance(entry, _Dead)]
        _expect(
            len(dead) == 1 and dead[0].resend_times == 2,
            "a message is dead-lettered once its retries are spent",
            repr(dead),
        )
        _check_call_order(log, qc.max_chunk_size)
        fresh = await self.open(queue_name, cc, qc)
        rest = await self.fetch_through_sentinel(fresh, "a sentinel after the App run")
        _expect(
            not rest,
            "everything an App run finished was acked (nothing is delivered again)",
            repr(rest),
        )
        await self.close(fresh)

    @_contract_check
    async def check_app_dead_letter_queue(self) -> None:
        """Dead letters go to a dead-letter queue of the same connector with why and where
        from (headers, or a DeadLetterEnvelope without them); a ``retry_on`` exception is
        resent after the ``retry_backoff`` delays first; ``replay_dead_letters`` puts them back
        on their source queue as fresh messages; a dead-letter queue's consumer reads the
        fields typed (``dead_letter_info()``); and nothing is left on either queue."""
        backoff = RetryBackoff(first=0.2, factor=2.0, maximum=1.0, jitter=0.0)
        source, cc, qc = await self.new_queue(
            "dlq-source",
            frequency=0.2,
            retries=2,
            retry_on=(TimeoutError,),
            retry_backoff=backoff,
        )
        dlq, _, dlq_qc = await self.new_queue("dlq-target", frequency=0.2)
        producer = self.publisher(source, cc, qc)
        for payload in ("ok", "bad", "flaky"):
            await producer.connector.send_messages(payload.encode())
        await self.close(producer)
        headers = isinstance(
            self.connector(connector_config=cc, queue_name=dlq, config=dlq_qc), Publisher
        )
        target = DeadLetterQueue(queue_name=dlq, config=dlq_qc)
        seen: list[tuple[str, int, float]] = []

        def failing_app() -> App:
            app = App(shutdown_timeout=5.0)
            app.connector_register(connector=self.connector, config=cc)

            @app.queue_consumer(queue_name=source, config=qc, dead_letter=target)
            async def handler(message: Message[str]) -> None:
                seen.append((message.payload, message.rw_resend_times, time.monotonic()))
                if message.payload == "bad":
                    raise ValueError("contract check")
                if message.payload == "flaky":
                    raise TimeoutError("flaky downstream")

            return app

        # 1: "bad" is dead-lettered at once, "flaky" after 2 resends 0.2 s and 0.4 s apart.
        app = failing_app()
        await self._run_app(app, lambda: len(seen) == 5, "a run dead-letters two messages")
        flaky = [at for payload, _, at in seen if payload == "flaky"]
        _expect(
            [times for payload, times, _ in seen if payload == "flaky"] == [0, 1, 2],
            "a retry_on exception is resent up to retries",
            repr(seen),
        )
        gaps = [later - earlier for earlier, later in itertools.pairwise(flaky)]
        _expect(
            len(gaps) == 2 and gaps[0] >= 0.2 - 0.05 and gaps[1] >= 0.4 - 0.05,
            "resends wait the retry_backoff delays (0.2 s, then 0.4 s)",
            f"gaps {gaps!r}",
        )
        # 2: both are on the dead-letter queue; replayed, they come back fresh.
        result = await replay_dead_letters(app, dlq, config=dlq_qc)
        await app.close_publishers()
        _expect(
            result == ReplayResult(replayed=2, skipped=0),
            "replay_dead_letters puts every dead letter back on its source queue",
            repr(result),
        )
        # 3: replayed, "flaky" now succeeds; "bad" fails again, and the dead-letter queue's
        # consumer reads why.
        seen.clear()
        infos: list[DeadLetterInfo | None] = []
        payloads: list[object] = []
        app = App(shutdown_timeout=5.0)
        app.connector_register(connector=self.connector, config=cc)

        @app.queue_consumer(queue_name=source, config=qc, dead_letter=target)
        async def again(message: Message[str]) -> None:
            seen.append((message.payload, message.rw_resend_times, time.monotonic()))
            if message.payload == "bad":
                raise ValueError("still bad")

        if headers:

            @app.queue_consumer(queue_name=dlq, config=dlq_qc)
            async def read_headers(message: Message[str]) -> None:
                infos.append(dead_letter_info())
                payloads.append(message.payload)

        else:

            @app.queue_consumer(queue_name=dlq, config=dlq_qc)
            async def read_envelope(message: Message[DeadLetterEnvelope]) -> None:
                infos.append(message.payload.rw_dead_letter)
                payloads.append(message.payload.data.decode())

        await self._run_app(app, lambda: len(infos) == 1, "the replayed dead letters are handled")
        _expect(
            sorted((p, t) for p, t, _ in seen) == [("bad", 0), ("flaky", 0)],
            "replayed dead letters come back as fresh messages (resend counter 0)",
            repr(seen),
        )
        _expect(payloads == ["bad"], "a dead letter keeps its bytes", repr(payloads))
        info = infos[0]
        _expect(info is not None, "a dead letter carries romeways-dlq-* headers")
        info = cast(DeadLetterInfo, info)
        _expect(
            (info.queue_name, info.connector_name, info.attempts, info.exception_type)
            == (source, cc.connector_name, 1, "ValueError")
            and "still bad" in info.reason,
            "a dead letter says its source queue, connector, attempts, exception and reason",
            repr(info),
        )
        for name, config in ((source, qc), (dlq, dlq_qc)):
            fresh = await self.open(name, cc, config)
            rest = await self.fetch_through_sentinel(fresh, "a sentinel after the dead letters")
            _expect(not rest, "every finished message was acked on both queues", repr(rest))
            await self.close(fresh)

    async def _run_app(self, app: App, done: Callable[[], bool], what: str) -> None:
        """Run ``app`` until ``done()`` (then a moment for the acks), then stop it."""
        run = asyncio.create_task(app.start())
        try:
            await _wait_for(done, self.delivery_timeout)
            await asyncio.sleep(0.5)
        except TimeoutError:
            raise ContractError(what, f"not within {self.delivery_timeout}s") from None
        finally:
            app.stop()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)

    @_contract_check
    async def check_app_batch_handler(self) -> None:
        """A real ``App.start()`` with a ``batch_consumer``: the handler gets chunks of more than
        one message, a message it resends comes back once with its counter raised, one it
        dead-letters reaches the hook, every message is acked once after it finished, and
        nothing is lost or left on the queue."""
        queue_name, cc, qc = await self.new_queue(
            "batch", max_chunk_size=5, frequency=0.2, retries=2
        )
        producer = self.publisher(queue_name, cc, qc)  # not started: joins no group
        plain = [f"b{i}" for i in range(10)]
        sent = [*plain[:4], "resend-me", *plain[4:8], "dead-me", *plain[8:]]
        for payload in sent:
            await producer.connector.send_messages(payload.encode())
        await self.close(producer)

        log: list[_Entry] = []
        sizes: list[int] = []
        app = App(shutdown_timeout=5.0)
        app.connector_register(connector=_recording(self.connector, log), config=cc)

        async def dead_letter(letter: DeadLetter) -> None:
            log.append(_Dead(letter.data, letter.resend_times))

        @app.batch_consumer(queue_name=queue_name, config=qc, dead_letter=dead_letter)
        async def handler(batch: Batch) -> None:
            sizes.append(len(batch))
            await asyncio.sleep(0)
            for message in batch:
                log.append(_Handling(message.payload, message.rw_resend_times))
                if message.payload == "resend-me" and message.rw_resend_times == 0:
                    batch.resend(message, delay=0)
                    log.append(_Raised(message.payload, message.rw_resend_times))
                elif message.payload == "dead-me":
                    batch.dead_letter(message, "contract check")
                else:
                    log.append(_Handled(message.payload, message.rw_resend_times))

        def finished() -> bool:
            handled = {entry.payload for entry in log if isinstance(entry, _Handled)}
            dead = any(isinstance(entry, _Dead) for entry in log)
            return dead and handled >= {*plain, "resend-me"} and _unacked(log) == []

        run = asyncio.create_task(app.start())
        try:
            await _wait_for(finished, self.delivery_timeout)
        except TimeoutError:
            raise ContractError(
                "an App run with a batch handler finishes every message",
                f"after {self.delivery_timeout}s the run had only done {log!r}",
            ) from None
        finally:
            app.stop()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)

        _expect(
            max(sizes, default=0) > 1,
            "a batch handler gets chunks of more than one message",
            f"batch sizes {sizes!r} for {len(sent)} messages sent at once",
        )
        _expect(
            all(size <= qc.max_chunk_size for size in sizes),
            "a batch holds at most max_chunk_size messages",
            repr(sizes),
        )
        handled = [
            (entry.payload, entry.resend_times) for entry in log if isinstance(entry, _Handled)
        ]
        expected = sorted([*((p, 0) for p in plain), ("resend-me", 1)])
        _expect(
            sorted(handled) == expected,
            "each message of a batch is handled once; a resent one comes back with its counter "
            "raised",
            f"handled {handled!r}",
        )
        dead = [entry for entry in log if isinstance(entry, _Dead)]
        _expect(
            [(Message.from_message(d.data).payload, d.resend_times) for d in dead]
            == [("dead-me", 0)],
            "a message the batch handler dead-letters reaches the hook once",
            repr(dead),
        )
        _check_call_order(log, qc.max_chunk_size)
        fresh = await self.open(queue_name, cc, qc)
        rest = await self.fetch_through_sentinel(fresh, "a sentinel after the batch run")
        _expect(
            not rest,
            "everything a batch handler finished was acked (nothing is delivered again)",
            repr(rest),
        )
        await self.close(fresh)

    @_contract_check
    async def check_shutdown_leaves_unfinished_unacked(self) -> None:
        """Stopping an App while a handler runs past the shutdown timeout: ``start()`` still
        returns in time, that message is not acked, the connector is closed, and the message
        (for at-least-once connectors) and those never fetched are delivered again."""
        queue_name, cc, qc = await self.new_queue(
            "shutdown", max_chunk_size=1, frequency=0.2, sequential=True
        )
        producer = self.publisher(queue_name, cc, qc)  # not started: joins no group
        for payload in (b"first", b"stuck", b"never-fetched"):
            await producer.connector.send_messages(payload)
        await self.close(producer)

        log: list[_Entry] = []
        stuck = asyncio.Event()
        app = App(shutdown_timeout=0.5)
        app.connector_register(connector=_recording(self.connector, log), config=cc)

        @app.queue_consumer(queue_name=queue_name, config=qc)
        async def handler(message: Message) -> None:
            log.append(_Handling(message.payload, message.rw_resend_times))
            if message.payload == "stuck":
                stuck.set()
                await asyncio.Event().wait()  # never finishes: cancelled at shutdown
            log.append(_Handled(message.payload, message.rw_resend_times))

        run = asyncio.create_task(app.start())
        try:
            await asyncio.wait_for(stuck.wait(), self.delivery_timeout)
        except TimeoutError:
            raise ContractError("an App run handles messages", repr(log)) from None
        finally:
            app.stop()
            stop_started = time.monotonic()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)
        stop_took = time.monotonic() - stop_started
        _expect(
            stop_took <= app.shutdown_timeout + self.slack,
            "close() is quick, so shutdown takes about the shutdown timeout",
            f"start() took {stop_took:.2f}s to return after stop() with shutdown_timeout=0.5",
        )
        _check_call_order(log, 1)
        acked = {data for entry in log if isinstance(entry, Acked) for data in entry.messages}
        _expect(b"first" in acked, "a handled message is acked", repr(log))
        _expect(b"stuck" not in acked, "an interrupted message is not acked", repr(log))

        fresh = await self.open(queue_name, cc, qc)
        again = [data for _, data in await self.fetch_through_sentinel(fresh, "a sentinel")]
        expected = [b"stuck", b"never-fetched"] if self.redelivers_unacked else [b"never-fetched"]
        _expect(
            again == expected,
            "after a shutdown the unfinished message is delivered again"
            if self.redelivers_unacked
            else "after a shutdown the messages never fetched are still there",
            f"a new instance got {again!r}, expected {expected!r}",
        )
        await self.close(fresh)

    @_contract_check
    async def check_app_max_concurrency(self) -> None:
        """``max_concurrency=3`` through the connector: never more than 3 handlers in flight, a
        slow message (the first) does not keep the others from finishing (its handler waits
        for them), each finished message is acked once, after it finished, acks out of order
        and across fetches included, and a new instance gets none of them again."""
        limit = 3
        queue_name, cc, qc = await self.new_queue(
            "concurrency", max_chunk_size=2, frequency=0.2, max_concurrency=limit
        )
        producer = self.publisher(queue_name, cc, qc)  # not started: joins no group
        sent = ["slow", *(f"c{i}" for i in range(7))]
        for payload in sent:
            await producer.connector.send_messages(payload.encode())
        await self.close(producer)

        log: list[_Entry] = []
        others_done = asyncio.Event()
        in_flight = [0, 0]  # now, the most seen
        waited: list[bool] = []
        app = App(shutdown_timeout=5.0)
        app.connector_register(connector=_recording(self.connector, log), config=cc)

        @app.queue_consumer(queue_name=queue_name, config=qc)
        async def handler(message: Message) -> None:
            log.append(_Handling(message.payload, message.rw_resend_times))
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            try:
                if message.payload == "slow":
                    try:
                        await asyncio.wait_for(others_done.wait(), self.delivery_timeout)
                        waited.append(True)
                    except TimeoutError:
                        waited.append(False)
                else:
                    await asyncio.sleep(0.01)
            finally:
                in_flight[0] -= 1
            log.append(_Handled(message.payload, message.rw_resend_times))
            handled = {e.payload for e in log if isinstance(e, _Handled)}
            if handled >= set(sent[1:]):
                others_done.set()

        run = asyncio.create_task(app.start())
        try:
            await _wait_for(lambda: bool(waited) and _unacked(log) == [], 2 * self.delivery_timeout)
        except TimeoutError:
            raise ContractError(
                "an App run with max_concurrency finishes and acks every message",
                f"after {2 * self.delivery_timeout}s the run had only done {log!r}",
            ) from None
        finally:
            app.stop()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)
        _expect(
            waited == [True],
            "with max_concurrency a slow message does not hold up the others",
            f"the others did not all finish within {self.delivery_timeout}s of it: {log!r}",
        )
        _expect(
            in_flight[1] <= limit,
            "with max_concurrency at most that many handlers are in flight",
            f"{in_flight[1]} were, max_concurrency={limit}",
        )
        handled = sorted(str(e.payload) for e in log if isinstance(e, _Handled))
        _expect(handled == sorted(sent), "every message is handled once", repr(handled))
        _check_call_order(log, qc.max_chunk_size, exact_chunk_size=False)
        fresh = await self.open(queue_name, cc, qc)
        rest = await self.fetch_through_sentinel(fresh, "a sentinel after the run")
        _expect(
            not rest,
            "everything finished out of order with max_concurrency was acked (nothing is "
            "delivered again)",
            repr(rest),
        )
        await self.close(fresh)

    @_contract_check
    async def check_app_run_in_worker_process(self) -> None:
        """``spawn_process=True``: the connector works in a forked worker process (it opens
        its connections in ``on_start``, not before), and shuts down when the App stops. An
        ``in_process_only`` connector cannot: then registering it so must be refused."""
        if in_process_only(self.connector):
            _, cc, _ = await self.new_queue("process")
            try:
                App().connector_register(connector=self.connector, config=cc, spawn_process=True)
            except RegistrationError:
                raise _DoesNotApply(
                    f"{getattr(self.connector, '__name__', self.connector)} is in_process_only: "
                    "checked only that spawn_process=True is refused"
                ) from None
            raise ContractError(
                "an in_process_only connector is refused with spawn_process=True: "
                "connector_register accepted it"
            )
        if "fork" not in multiprocessing.get_all_start_methods():
            return  # romeways spawns workers with fork where it can; spawn needs a module
        queue_name, cc, qc = await self.new_queue("process", frequency=0.2)
        producer = self.publisher(queue_name, cc, qc)  # not started: joins no group
        sent = [f"p{i}" for i in range(5)]
        for payload in sent:
            await producer.connector.send_messages(payload.encode())
        await self.close(producer)

        results = multiprocessing.get_context("fork").SimpleQueue()
        app = App(shutdown_timeout=5.0)
        app.connector_register(connector=self.connector, config=cc, spawn_process=True)

        @app.queue_consumer(queue_name=queue_name, config=qc)
        async def handler(message: Message) -> None:
            results.put(message.payload)

        run = asyncio.create_task(app.start())
        seen: list[str] = []
        try:
            deadline = time.monotonic() + self.delivery_timeout
            while len(seen) < len(sent) and time.monotonic() < deadline and not run.done():
                if results.empty():
                    await asyncio.sleep(0.05)
                else:
                    seen.append(results.get())
        finally:
            app.stop()
            await asyncio.wait_for(run, app.shutdown_timeout + self.delivery_timeout)
        _expect(seen == sent, "a worker process handles every message in order", repr(seen))
        fresh = await self.open(queue_name, cc, qc)
        rest = await self.fetch_through_sentinel(fresh, "a sentinel after the process run")
        _expect(not rest, "a worker process acks what it finished", repr(rest))
        await self.close(fresh)

    @_contract_check
    async def check_message_metadata(self) -> None:
        """Optional (``romeways.ProvidesMetadata``): ``message_metadata(delivery)`` gives a
        well-formed MessageMetadata for each delivery not yet acked, two messages have different
        positions, and (for a ``romeways.Publisher``) the key and headers given to ``publish``
        come back in it."""
        name = getattr(self.connector, "__name__", self.connector)
        if isinstance(self.connector, type) and not issubclass(self.connector, ProvidesMetadata):
            raise _DoesNotApply(f"{name} does not provide message_metadata (optional)")
        queue_name, cc, qc = await self.new_queue("metadata", frequency=0.5)
        producer = self.publisher(queue_name, cc, qc)  # not started, as romeways.publish uses it
        key, headers = b"order-17", (("trace", b"00-4bf92f-01"), ("tenant", b"acme"))
        publisher = producer.connector if isinstance(producer.connector, Publisher) else None
        if publisher is not None:
            await publisher.publish(b"keyed", key=key, headers=list(headers))
        else:
            await producer.connector.send_messages(b"keyed")
        await producer.connector.send_messages(b"plain")
        await self.close(producer)
        consumer = await self.open(queue_name, cc, qc)
        got = await self.fetch(consumer, _at_least(2), "the two messages sent")
        _expect([d for _, d in got] == [b"keyed", b"plain"], "FIFO within a queue", repr(got))
        connector = cast(object, consumer.connector)
        if not isinstance(connector, ProvidesMetadata):
            raise _DoesNotApply(f"{name} does not provide message_metadata (optional)")
        found = [connector.message_metadata(delivery) for delivery, _ in got]
        for metadata in found:
            _check_metadata(metadata)
        first, second = cast("list[MessageMetadata]", found)
        _expect(
            not first.position or first.position != second.position,
            "two messages have different positions",
            f"both at {first.where()!r}",
        )
        if publisher is not None:
            _expect(
                first.key == key,
                "message_metadata gives the key the message was published with",
                f"published with key {key!r}, got {first.key!r}",
            )
            _expect(
                all(pair in first.headers for pair in headers),
                "message_metadata gives the headers the message was published with",
                f"published with {headers!r}, got {first.headers!r}",
            )
        await consumer.ack([d for d, _ in got])
        await self.close(consumer)

    @_contract_check
    async def check_consumer_lag(self) -> None:
        """Optional (``romeways.ReportsLag``): ``consumer_lag()`` returns promptly a mapping of
        source names (str) to counts (int >= 0), while messages wait and while they are
        handled."""
        name = getattr(self.connector, "__name__", self.connector)
        if isinstance(self.connector, type) and not issubclass(self.connector, ReportsLag):
            raise _DoesNotApply(f"{name} does not report consumer_lag (optional)")
        queue_name, cc, qc = await self.new_queue("lag", frequency=0.5, max_chunk_size=1)
        opened = await self.open(queue_name, cc, qc)
        lag_of = capabilities(opened.connector).lag  # as the worker's telemetry sees it
        if lag_of is None:
            raise _DoesNotApply(f"{name} does not report consumer_lag (optional)")
        for i in range(3):
            await opened.connector.send_messages(f"lag-{i}".encode())
        got = await self.fetch(opened, _at_least(1), "a message sent")
        started = time.monotonic()
        lag = await lag_of()
        took = time.monotonic() - started
        _expect(
            took <= 1.0 + self.slack,
            "consumer_lag() is cheap (telemetry gives up on it after 1s)",
            f"it took {took:.2f}s",
        )
        _expect(
            isinstance(cast(object, lag), Mapping),
            "consumer_lag() returns a mapping",
            f"got a {type(lag).__name__}",
        )
        for source, behind in lag.items():
            _expect(
                isinstance(cast(object, source), str)
                and type(cast(object, behind)) is int
                and behind >= 0,
                "consumer_lag() maps source names (str) to message counts (int >= 0)",
                f"got {source!r}: {behind!r}",
            )
        got += await self.fetch(opened, _at_least(2), "the other messages sent")
        await opened.ack([d for d, _ in got])
        await self.close(opened)


CONTRACT_CHECKS: tuple[str, ...] = tuple(_REGISTRY)
"""The checks, in the order ``check_connector`` runs them; ``check_<name>`` are the methods,
``test_<name>`` their pytest entry points."""


def _pytest_entry(name: str) -> Callable[[ConnectorContract[Any, Any]], None]:
    def test(self: ConnectorContract[Any, Any]) -> None:
        moot = self.run_check(name)
        if moot is not None:
            import pytest  # only the pytest entry points run under pytest

            pytest.skip(moot)

    test.__name__ = f"test_{name}"
    test.__qualname__ = f"{ConnectorContract.__qualname__}.test_{name}"
    test.__doc__ = getattr(ConnectorContract, f"check_{name}").__doc__
    return test


for _name in CONTRACT_CHECKS:
    setattr(ConnectorContract, f"test_{_name}", _pytest_entry(_name))


def _check_metadata(metadata: object) -> None:
    """What message_metadata gives for a delivery not yet acked is a well-formed one."""
    _expect(
        isinstance(metadata, MessageMetadata),
        "message_metadata(delivery) gives a romeways.MessageMetadata for a delivery not acked",
        f"got {metadata!r}",
    )
    md = cast(MessageMetadata, metadata)
    fields: list[tuple[bool, str]] = [
        (md.key is None or isinstance(cast(object, md.key), bytes), "key is bytes or None"),
        (
            isinstance(cast(object, md.headers), tuple)
            and all(
                isinstance(cast(object, pair), tuple)
                and len(pair) == 2
                and isinstance(cast(object, pair[0]), str)
                and isinstance(cast(object, pair[1]), bytes)
                for pair in md.headers
            ),
            "headers is a tuple of (str, bytes) pairs",
        ),
        (
            md.timestamp is None or isinstance(cast(object, md.timestamp), float | int),
            "timestamp is seconds (float) or None",
        ),
        (
            isinstance(cast(object, md.position), tuple)
            and all(
                isinstance(cast(object, pair), tuple)
                and len(pair) == 2
                and isinstance(cast(object, pair[0]), str)
                and isinstance(cast(object, pair[1]), str | int)
                for pair in md.position
            ),
            "position is a tuple of (str, str | int) pairs",
        ),
        (
            md.delivery_count is None
            or (isinstance(cast(object, md.delivery_count), int) and md.delivery_count >= 1),
            "delivery_count is an int >= 1 or None",
        ),
    ]
    for ok, guarantee in fields:
        _expect(ok, f"message_metadata: {guarantee}", repr(md))


async def check_connector(
    connector: ConnectorFactory[ConnectorConfigT, QueueConfigT],
    make_configs: Callable[[str], Awaitable[tuple[ConnectorConfigT, QueueConfigT]]],
    *,
    redelivers_unacked: bool = True,
    checks: Sequence[str] = CONTRACT_CHECKS,
    timeout: float = 60.0,
    slack: float = 1.0,
    delivery_timeout: float = 20.0,
) -> None:
    """Run the contract checks (all of ``CONTRACT_CHECKS`` by default) against ``connector``, with
    ``make_configs(queue_name)`` making each fresh queue; raises ContractError at the first
    broken guarantee. The same checks as a ``ConnectorContract`` subclass, without pytest."""

    contract = _FunctionContract[ConnectorConfigT, QueueConfigT](make_configs)
    contract.connector = connector
    contract.redelivers_unacked = redelivers_unacked
    contract.timeout = timeout
    contract.slack = slack
    contract.delivery_timeout = delivery_timeout
    for name in checks:
        await contract.check(name)


class _FunctionContract(ConnectorContract[ConnectorConfigT, QueueConfigT]):
    """The contract with ``make_configs`` given as a function (for ``check_connector``)."""

    def __init__(
        self, make_configs: Callable[[str], Awaitable[tuple[ConnectorConfigT, QueueConfigT]]]
    ) -> None:
        self._make_configs = make_configs

    async def make_configs(self, queue_name: str) -> tuple[ConnectorConfigT, QueueConfigT]:
        return await self._make_configs(queue_name)


# -- recording a worker's calls ----------------------------------------------------------------


class _Handling(msgspec.Struct, frozen=True):
    """The contract's handler got a message (payload and resend counter)."""

    payload: object
    resend_times: int


class _Handled(msgspec.Struct, frozen=True):
    """The contract's handler returned."""

    payload: object
    resend_times: int


class _Raised(msgspec.Struct, frozen=True):
    """The contract's handler raised ResendException."""

    payload: object
    resend_times: int


class _Dead(msgspec.Struct, frozen=True):
    """The contract's dead-letter hook got a message."""

    data: bytes
    resend_times: int


_Entry: TypeAlias = ConnectorEvent | _Handling | _Handled | _Raised | _Dead
"""One line of a check's log: a call the worker made on the connector, or what its handler did."""


def _recording(
    factory: ConnectorFactory[Any, Any], log: list[_Entry]
) -> ConnectorFactory[Any, Any]:
    """``factory`` recorded into ``log``, shared with the handler, so that the order of handling
    and of the worker's calls on the connector is visible."""
    return RecordingConnector.wrap(factory, on_event=lambda _, event: log.append(event))


def _unacked(log: Sequence[_Entry]) -> list[int]:
    fetched = sum(len(entry.messages) for entry in log if isinstance(entry, Fetched))
    acked = {d for entry in log if isinstance(entry, Acked) for d in entry.deliveries}
    return [d for d in range(fetched) if d not in acked]


def _finished_by(entry: _Entry, message: Message[Any], data: bytes) -> bool:
    """Whether ``entry`` finished the message: its handler returned or raised, or it was
    dead-lettered."""
    if isinstance(entry, _Handled | _Raised):
        return (entry.payload, entry.resend_times) == (message.payload, message.rw_resend_times)
    return isinstance(entry, _Dead) and entry.data == data


def _check_call_order(
    log: Sequence[_Entry], max_chunk_size: int, *, exact_chunk_size: bool = True
) -> None:
    """What a worker did with the connector is what the protocol promises connectors; with
    ``exact_chunk_size=False`` (``max_concurrency``) fetches may ask for fewer messages."""
    calls = [e for e in log if isinstance(e, Started | Fetched | Acked | Closed)]
    names = [type(e).__name__ for e in calls]
    first = calls[0] if calls else None
    _expect(isinstance(first, Started), "on_start() comes first", repr(names[:3]))
    _expect(names.count("Started") == 1, "on_start() is called once", repr(names))
    _expect(
        names.count("Closed") == 1 and isinstance(calls[-1], Closed),
        "close() is called once on shutdown, after the last ack",
        repr(names[-3:]),
    )
    for entry in log:
        if isinstance(entry, Fetched):
            asked = entry.max_chunk_size
            _expect(
                (asked == max_chunk_size if exact_chunk_size else 1 <= asked <= max_chunk_size)
                and len(entry.messages) <= asked,
                "chunks respect max_chunk_size",
                f"asked {entry.max_chunk_size}, got {len(entry.messages)}",
            )
    acked: set[int] = set()
    for position, entry in enumerate(log):
        if not isinstance(entry, Acked):
            continue
        before = log[:position]
        for delivery, data in zip(entry.deliveries, entry.messages, strict=True):
            _expect(delivery not in acked, "a delivery is acked once", f"delivery {delivery}")
            _expect(data is not None, "ack names deliveries fetched", f"delivery {delivery}")
            assert data is not None
            acked.add(delivery)
            message = Message.from_message(data)
            finished = any(_finished_by(e, message, data) for e in before)
            _expect(finished, "ack comes after the message is finished", f"ack of {data!r}")
            resent = any(isinstance(e, Resent) and e.delivery == delivery for e in before)
            raised = any(isinstance(e, _Raised) and _finished_by(e, message, data) for e in before)
            dead = any(isinstance(e, _Dead) and e.data == data for e in before)
            _expect(
                not raised or dead or resent,
                "a resent message is put back before its ack",
                f"ack of {data!r}",
            )


class _LoopWatch:
    """Measures how long the event loop stood still (a 10 ms ticker late by over 50 ms)."""

    def __init__(self) -> None:
        self.stalled = 0.0
        self.elapsed = 0.0
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            if now - last > 0.06:
                self.stalled += now - last - 0.01
            last = now

    async def __aenter__(self) -> _LoopWatch:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._started
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  # a condition over a log, not an event
            await asyncio.sleep(0.02)


def _at_least(count: int) -> Callable[[list[bytes]], bool]:
    return lambda seen: len(seen) >= count
