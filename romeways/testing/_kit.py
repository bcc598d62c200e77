"""``TestKit``: run an App's handlers in-process, with no broker, through the real worker.

Each queue of the app is consumed by the production ``Worker`` (so resend counting, the retries
cap, dead-lettering, handler timeouts and acknowledgement behave exactly as in production) over
an in-memory connector the kit owns. ``await kit.publish(handle, payload)`` (a ``QueueHandle[T]``,
so the payload is type-checked) puts one message on a queue and returns once it is finished --
handled, or dead-lettered after its resends -- with a ``DeliveryReport`` of every attempt.
The kit's connector tells each message's metadata (the key and headers it was published with, when
it was put on the queue, its place in the queue), so ``romeways.context()`` in a handler shows
them as a broker's connector would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, cast, overload

import msgspec

from .._config import GenericConnectorConfig, GenericQueueConfig
from .._connector import Connector, MessageMetadata
from .._errors import RomewaysError
from .._message import PayloadT
from .._middleware import CallNext, HandlingResult, Middleware, Outcome, result_of
from .._publish import Headers, Publishable, QueueHandle, normalise_headers, set_sink
from .._route import Route
from .._worker import Worker, build_workers
from ..connectors.support import DeliveryLedger

if TYPE_CHECKING:
    from .._app import App
    from .._context import MessageContext


_P = ParamSpec("_P")


class PayloadError(RomewaysError, TypeError):
    """``kit.publish`` was given a payload the queue's consumer cannot decode: a mistake in the
    test, raised before the message is put on the queue (with ``raise_exceptions``)."""


@dataclass(eq=False)
class DeliveryReport:
    """What became of one message: every handling attempt and how it ended.

    ``outcome`` is that of the last attempt (None while not finished); ``resends`` how often the
    worker put it back on the queue; ``reason`` why it was resent or dead-lettered;
    ``exception`` what the handler raised when it FAILED."""

    connector_name: str
    queue_name: str
    data: bytes
    attempts: list[HandlingResult] = field(default_factory=list[HandlingResult])
    resends: int = 0
    finished: bool = False
    headers: Sequence[tuple[str, bytes]] | None = None
    key: bytes | None = None

    @property
    def outcome(self) -> Outcome | None:
        return self.attempts[-1].outcome if self.attempts else None

    @property
    def handled(self) -> bool:
        return self.outcome is Outcome.HANDLED

    @property
    def dead_lettered(self) -> bool:
        """Dead-lettered, whether because the handler failed or for another reason."""
        outcome = self.outcome
        return outcome is not None and outcome.dead_lettered

    @property
    def failed(self) -> bool:
        """The handler raised (and the message was dead-lettered)."""
        return self.outcome is Outcome.FAILED

    @property
    def reason(self) -> str | None:
        return self.attempts[-1].reason if self.attempts else None

    @property
    def exception(self) -> Exception | None:
        return self.attempts[-1].exception if self.attempts else None


def _check_decodes(route: Route[Any], data: bytes) -> None:
    try:
        route.codec.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        wanted = route.codec.payload_type
        type_name = getattr(wanted, "__name__", None) or repr(wanted)
        raise PayloadError(
            f"kit.publish to queue {route.queue_name!r}: handler {route.handler_name} cannot "
            f"decode the payload as {type_name}: {exc}. Publish a {type_name} (through the "
            "queue's typed handle, app.publisher(handler), a type checker catches this), or "
            "use kit.send(queue_name, data) to test bytes the handler cannot decode"
        ) from exc


class _Ticket:
    __slots__ = ("future", "report")

    def __init__(
        self, report: DeliveryReport, future: asyncio.Future[DeliveryReport] | None
    ) -> None:
        self.report = report
        self.future = future


class _KitMessage:
    """One message on a kit queue: its ticket, its bytes, when it was put there and its number
    in the queue (a resend is a new message of the same ticket)."""

    __slots__ = ("data", "sequence", "ticket", "timestamp")

    def __init__(self, ticket: _Ticket, data: bytes, sequence: int) -> None:
        self.ticket = ticket
        self.data = data
        self.sequence = sequence
        self.timestamp = time.time()


class _KitQueue:
    def __init__(self) -> None:
        self.items: asyncio.Queue[_KitMessage | None] = asyncio.Queue()
        self._sequence = itertools.count()

    def put(self, ticket: _Ticket, data: bytes) -> None:
        self.items.put_nowait(_KitMessage(ticket, data, next(self._sequence)))


class _KitConnector:
    """The in-memory connector the kit puts under every queue: FIFO, numbered deliveries, resend
    puts the envelope back, ack finishes a ticket unless the delivery was resent. It provides
    each message's metadata: key and headers as published, timestamp, position (queue name and
    the message's number in the queue)."""

    def __init__(
        self,
        kit: TestKit,
        *,
        connector_config: GenericConnectorConfig,
        queue_name: str,
        config: GenericQueueConfig,
    ) -> None:
        self._kit = kit
        self._connector_config = connector_config
        self._config = config
        self._queue_name = queue_name
        self._queue = kit.queue_for(connector_config.connector_name, queue_name)
        self._deliveries: DeliveryLedger[_KitMessage] = DeliveryLedger()
        self._resent: set[int] = set()
        self._closed = False

    @property
    def connector_config(self) -> GenericConnectorConfig:
        return self._connector_config

    @property
    def config(self) -> GenericQueueConfig:
        return self._config

    async def on_start(self) -> None:
        return None

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        items = self._queue.items
        if self._closed:
            return []
        first = await items.get()
        chunk: list[_KitMessage] = []
        if first is None:
            self._closed = True
            return []
        chunk.append(first)
        while len(chunk) < max_chunk_size and not items.empty():
            item = items.get_nowait()
            if item is None:
                self._closed = True
                break
            chunk.append(item)
        self._deliveries.add_all(chunk)
        return [message.data for message in chunk]

    def ticket(self, delivery: int) -> _Ticket | None:
        """The ticket of an unfinished delivery."""
        message = self._deliveries.get(delivery)
        return None if message is None else message.ticket

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        message = self._deliveries.get(delivery)
        if message is None:
            return None
        report = message.ticket.report
        return MessageMetadata(
            key=report.key,
            headers=tuple(report.headers or ()),
            timestamp=message.timestamp,
            position=(("queue", self._queue_name), ("sequence", message.sequence)),
        )

    async def send_messages(self, message: bytes) -> None:
        self._kit.enqueue(
            self._connector_config.connector_name, self._config, self._queue_name, message
        )

    async def resend(self, delivery: int, message: bytes) -> None:
        original = self._deliveries.get(delivery)
        if original is None:
            raise KeyError(f"delivery {delivery} is not an unfinished delivery of this queue")
        ticket = original.ticket
        ticket.report.resends += 1
        self._resent.add(delivery)
        self._queue.put(ticket, message)

    async def ack(self, deliveries: Sequence[int]) -> None:
        for delivery in deliveries:
            message = self._deliveries.pop(delivery)
            if message is None:
                continue
            if delivery in self._resent:
                self._resent.discard(delivery)
                continue
            self._kit.finish(message.ticket)

    async def close(self) -> None:
        return None


class _Recorder(Middleware):
    """Outermost middleware: records each attempt's result on the message's ticket."""

    async def __call__(self, ctx: MessageContext, call_next: CallNext) -> HandlingResult:
        try:
            result = await call_next()
        except Exception:
            _record(ctx, result_of(ctx, 0.0))
            raise
        if ctx.batch_contexts:  # a batch handler's chunk: each message's own result
            for each in ctx.batch_contexts:
                _record(each, result_of(each, result.duration))
        else:
            _record(ctx, result)
        return result


def _record(ctx: MessageContext, result: HandlingResult) -> None:
    connector = ctx.connector
    if isinstance(connector, _KitConnector):
        ticket = connector.ticket(ctx.delivery)
        if ticket is not None:
            ticket.report.attempts.append(result)


class TestKit:
    """Runs ``app``'s handlers in this event loop on in-memory queues; use it as
    ``async with TestKit(app) as kit:``.

    On entry it runs the app's start-up hooks (``run_hooks=False`` skips them and the shutdown
    hooks) and starts one real worker per queue; on exit it stops them and runs the shutdown
    hooks. While it runs, ``romeways.publish`` and ``QueueHandle.publish`` of this app go to the
    kit: to a queue it consumes, or else to ``kit.sent(queue_name)``.

    With ``raise_exceptions`` (the default) an exception a handler raises (after the worker
    dead-lettered its message) is raised again from ``publish``; a failure of a message nobody
    awaited is raised on exit. ``timeout`` bounds each wait, in seconds.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        *,
        raise_exceptions: bool = True,
        timeout: float = 10.0,
        run_hooks: bool = True,
    ) -> None:
        self.app = app
        self.raise_exceptions = raise_exceptions
        self.timeout = timeout
        self.run_hooks = run_hooks
        self.reports: list[DeliveryReport] = []
        """Every finished message, in the order they finished."""
        self._queues: dict[tuple[str, str], _KitQueue] = {}
        self._outbox: dict[str, list[bytes]] = {}
        self._unawaited: list[_Ticket] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: list[Worker] = []
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(raise_unsurfaced=exc is None)

    async def start(self) -> None:
        if self._running:
            raise RomewaysError("this TestKit is already running")
        if not self.app.routes:
            raise RomewaysError("the app has no queue consumers to test")
        for route in self.app.routes:
            self.queue_for(route.connector_name, route.queue_name)
        if self.run_hooks:
            await self.app.run_startup_hooks()
        self._running = True
        set_sink(self.app, self._sink)
        self.workers = build_workers(
            self.app,
            {route.connector_name for route in self.app.routes},
            self._stopping,
            connector_class=self._connector,
            extra_middleware=[_Recorder()],
        )
        self._tasks = [
            asyncio.create_task(w.run(), name=f"romeways-testkit:{w.route.queue_name}")
            for w in self.workers
        ]

    async def stop(self, *, raise_unsurfaced: bool = True) -> None:
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        for queue in self._queues.values():
            queue.items.put_nowait(None)
        try:
            if self._tasks:
                _, pending = await asyncio.wait(self._tasks, timeout=self.app.shutdown_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            set_sink(self.app, None)
            if self.run_hooks:
                await self.app.run_shutdown_hooks()
        if raise_unsurfaced and self.raise_exceptions:
            for ticket in self._unawaited:
                if ticket.report.exception is not None:
                    raise ticket.report.exception

    # -- publishing ---------------------------------------------------------------------------

    # The handle form takes what the handle's own ``publish`` takes (payload, key, headers), so
    # a wrong payload is reported with both types, not as a type variable mypy "cannot infer".
    @overload
    async def publish(
        self, target: Publishable[_P], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> DeliveryReport: ...

    @overload
    async def publish(
        self,
        target: QueueHandle[PayloadT],
        payload: PayloadT,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        timeout: float,
    ) -> DeliveryReport: ...

    @overload
    async def publish(
        self,
        target: str,
        payload: object,
        *,
        connector_name: str | None = None,
        key: bytes | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> DeliveryReport: ...

    async def publish(  # type: ignore[misc]  # signature 1 is QueueHandle.publish's: payload, key, headers
        self,
        target: QueueHandle[Any] | str,
        payload: object,
        *,
        connector_name: str | None = None,
        key: bytes | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> DeliveryReport:
        """Publish ``payload`` to a queue and wait until the message is finished, through all
        its resends. ``target`` is the queue's typed handle (``app.publisher(handler)``: the
        payload is checked against it statically), or its name (encoded with its consumer's
        codec, unchecked until run).

        Returns the DeliveryReport. With ``raise_exceptions`` (the default) a payload the
        consumer cannot decode raises PayloadError (naming queue, handler and the validation
        error) instead of becoming a dead letter, and the handler's exception is raised if it
        failed; TimeoutError if the message is not finished in time."""
        pairs = normalise_headers(headers)
        if isinstance(target, QueueHandle):
            route = self._route(target.queue_name, target.config.connector_name)
            data = target.encode(payload)
        elif isinstance(cast(object, target), str):  # untyped callers may give anything
            route = self._route(target, connector_name)
            data = route.codec.encode_payload(payload)
        else:
            raise TypeError(
                f"kit.publish(target={target!r}): give a QueueHandle (app.publisher(handler)) "
                "or a queue name"
            )
        if self.raise_exceptions:
            _check_decodes(route, data)
        return await self._deliver(route, data, key=key, headers=pairs, timeout=timeout)

    async def send(
        self,
        queue_name: str,
        data: bytes,
        *,
        connector_name: str | None = None,
        key: bytes | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> DeliveryReport:
        """Put raw bytes on a queue (say, a message that cannot be decoded), with an optional
        key and headers, and wait until it is finished, as ``publish`` does."""
        route = self._route(queue_name, connector_name)
        pairs = normalise_headers(headers)
        return await self._deliver(route, bytes(data), key=key, headers=pairs, timeout=timeout)

    def sent(self, queue_name: str) -> list[bytes]:
        """What was published to a queue this app does not consume, in order."""
        return list(self._outbox.get(queue_name, ()))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every message put on the kit's queues (including what handlers
        published) is finished."""
        await self._wait(asyncio.ensure_future(self._idle.wait()), timeout, "draining the queues")

    # -- internals ----------------------------------------------------------------------------

    def queue_for(self, connector_name: str, queue_name: str) -> _KitQueue:
        """Internal: the kit's queue under (connector, queue)."""
        key = (connector_name, queue_name)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KitQueue()
        return queue

    def _connector(
        self,
        *,
        connector_config: GenericConnectorConfig,
        queue_name: str,
        config: GenericQueueConfig,
    ) -> Connector[Any, Any]:
        return _KitConnector(
            self, connector_config=connector_config, queue_name=queue_name, config=config
        )

    def _route(self, queue_name: str, connector_name: str | None) -> Route[Any]:
        routes = [
            r
            for r in self.app.routes
            if r.queue_name == queue_name
            and (connector_name is None or r.connector_name == connector_name)
        ]
        if len(routes) == 1:
            return routes[0]
        known = ", ".join(sorted({repr(r.queue_name) for r in self.app.routes}))
        if not routes:
            raise RomewaysError(
                f"the app has no consumer of queue {queue_name!r}"
                + (f" on connector {connector_name!r}" if connector_name else "")
                + f" (its queues: {known})"
            )
        raise RomewaysError(
            f"queue {queue_name!r} is consumed on several connectors; give connector_name="
        )

    def enqueue(
        self,
        connector_name: str,
        config: GenericQueueConfig,
        queue_name: str,
        data: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        future: asyncio.Future[DeliveryReport] | None = None,
    ) -> _Ticket:
        """Internal: put a message on a kit queue, tracked until it is finished."""
        report = DeliveryReport(
            connector_name=connector_name,
            queue_name=queue_name,
            data=data,
            key=key,
            headers=headers,
        )
        ticket = _Ticket(report, future)
        self._outstanding += 1
        self._idle.clear()
        self.queue_for(connector_name, queue_name).put(ticket, data)
        return ticket

    def finish(self, ticket: _Ticket) -> None:
        """Internal: a message is finished (its connector acknowledged it)."""
        report = ticket.report
        if report.finished:
            return
        report.finished = True
        self.reports.append(report)
        if ticket.future is not None and not ticket.future.done():
            ticket.future.set_result(report)
        else:
            self._unawaited.append(ticket)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def _deliver(
        self,
        route: Route[Any],
        data: bytes,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        timeout: float | None,
    ) -> DeliveryReport:
        if not self._running:
            raise RomewaysError("the TestKit is not running; use 'async with TestKit(app)'")
        future: asyncio.Future[DeliveryReport] = asyncio.get_running_loop().create_future()
        self.enqueue(
            route.connector_name,
            route.config,
            route.queue_name,
            data,
            key=key,
            headers=headers,
            future=future,
        )
        report: DeliveryReport = await self._wait(
            future, timeout, f"a message to queue {route.queue_name!r}"
        )
        if self.raise_exceptions and report.exception is not None:
            raise report.exception
        return report

    async def _wait(self, future: asyncio.Future[Any], timeout: float | None, what: str) -> Any:
        limit = self.timeout if timeout is None else timeout
        waiters: list[asyncio.Future[Any]] = [future, *self._tasks]
        done, _ = await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        for task in self._tasks:
            if task in done:
                future.cancel()
                exc = task.exception()
                if exc is not None:
                    raise RomewaysError(f"a worker stopped while {what} was handled") from exc
                raise RomewaysError(f"a worker stopped while {what} was handled")
        future.cancel()
        raise TimeoutError(f"{what} was not finished within {limit}s")

    async def _sink(
        self,
        connector_name: str,
        queue_name: str,
        data: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> None:
        if (connector_name, queue_name) in self._queues and any(
            r.queue_name == queue_name and r.connector_name == connector_name
            for r in self.app.routes
        ):
            route = self._route(queue_name, connector_name)
            self.enqueue(connector_name, route.config, queue_name, data, key=key, headers=headers)
            return
        self._outbox.setdefault(queue_name, []).append(data)
        await asyncio.sleep(0)
