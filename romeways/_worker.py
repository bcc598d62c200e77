"""The worker loop: one per queue. Fetch a chunk, handle it, resend or dead-letter, ack, repeat.

Each message is handled with its context set (``romeways.context()``, log fields) and, when the
app has middleware, through the middleware chain. The common case (no middleware, no
``handler_timeout``) runs inline in the chunk loop: per message a decode, a step of the context
cursor and the handler's await, and nothing else on the way (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ._batch import Batch, DeadLetterMark, Resend
from ._config import GenericConnectorConfig, GenericQueueConfig
from ._connector import Capabilities, Connector, ConnectorFactory, Locate, capabilities
from ._context import CURRENT_MESSAGE, ChunkCursor, MessageContext, current_context
from ._dead_letters import DeadLetterQueue, new_info, publish_dead_letter
from ._errors import ResendException
from ._message import Message
from ._middleware import CallNext, HandlingResult, Middleware, Outcome, link, result_of
from ._private import loop_queues as _loop_queues
from ._route import DeadLetter, Route
from ._shutdown import STOP_DEADLINE
from .connectors.support import Backoff

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("romeways")

# A failed fetch is retried after 0.2 s, doubling, at most 5 s.
_FETCH_BACKOFF = Backoff(initial=0.2, maximum=5.0)
_MIN_EMPTY_FETCH = 0.05  # seconds an empty fetch takes at least, so an idle worker sleeps
# A failed dead-letter publish is retried after 0.5 s, doubling, at most 30 s.
_DEAD_LETTER_BACKOFF = Backoff(initial=0.5, maximum=30.0)
_HELD_WAIT = 1.0  # seconds a stopping worker waits for room to put held resends back
_UNWIND_WAIT = 0.1  # seconds cancelled handlers (max_concurrency) get before the connector closes

Decode = Callable[[bytes], Message[Any]]


class _HandlerTimedOut(Exception):
    """Internal: the handler ran past the queue's handler_timeout."""


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, and never an exception itself: ``<unprintable Type>``
    when its ``__str__`` fails, so that a handler's odd exception cannot break the failure path."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:
        return f"<unprintable {name}>"
    return f"{name}: {text}" if text else name


def stuck_limit(bound: float) -> float:
    """How long past the start of something bounded by ``bound`` seconds a worker counts as
    stuck in it (health fails): far past, so that a slow moment is not a stuck worker."""
    return 2 * bound + 5.0


class WorkerProbe:
    """One worker as its message contexts and the telemetry see it: names, and liveness (when
    its last poll of the connector came back, how many messages it is handling, since when its
    dead-letter hooks in flight run and, with ``max_concurrency``, since when each message in
    flight is handled)."""

    __slots__ = (
        "app",
        "batch",
        "config",
        "connector_name",
        "frequency",
        "handler",
        "handling",
        "has_hook",
        "hook_starts",
        "inflight",
        "last_poll",
        "queue_name",
    )

    def __init__(self, app: App, route: Route[Any]) -> None:
        self.app = app
        self.connector_name = route.connector_name
        self.queue_name = route.queue_name
        self.handler = route.handler_name
        self.config = route.config
        self.frequency = route.config.frequency
        self.has_hook = route.dead_letter is not None
        self.batch = route.batch
        self.last_poll: float | None = None
        self.inflight = 0
        self.hook_starts: list[float] = []  # time.monotonic() of each hook call in flight
        # With max_concurrency: time.monotonic() when each delivery in flight was handed out.
        self.handling: dict[int, float] = {}

    def stuck(self, now: float) -> str:
        """Why this worker is far past the bound of what it is doing, naming its handler; ""
        when it is not. Bounded are the dead-letter hook (``dead_letter_timeout``) and, with a
        ``handler_timeout``, the chunk in flight (since its fetch came back) or, with
        ``max_concurrency``, the oldest message in flight (the worker polls on meanwhile)."""
        config = self.config
        if self.hook_starts:
            ran = now - min(self.hook_starts)
            if ran > stuck_limit(config.dead_letter_timeout):
                return (
                    f"the dead-letter hook of {self.handler} has run for {ran:.1f}s, far past "
                    f"dead_letter_timeout={config.dead_letter_timeout}s (it ignores cancellation "
                    "or blocks)"
                )
        timeout = config.handler_timeout
        if timeout is not None and self.handling:
            ran = now - min(self.handling.values())
            if ran > stuck_limit(timeout + config.dead_letter_timeout):
                return (
                    f"{self.handler} has held a message for {ran:.1f}s, far past "
                    f"handler_timeout={timeout}s (a handler ignores cancellation or blocks)"
                )
        elif timeout is not None and self.inflight > 0 and self.last_poll is not None:
            # Each message: its handler, then perhaps its resend or dead letter; a batch: one
            # handler call, then the messages' dead letters one after the other.
            if self.batch:
                bound = timeout + config.dead_letter_timeout * self.inflight
            else:
                bound = (timeout + config.dead_letter_timeout) * (
                    self.inflight if config.sequential else 1
                )
            ran = now - self.last_poll
            if ran > stuck_limit(bound):
                return (
                    f"{self.handler} has held a chunk of {self.inflight} message(s) for "
                    f"{ran:.1f}s, far past handler_timeout={timeout}s per message (a handler "
                    "ignores cancellation or blocks)"
                )
        return ""


class Worker:
    """Consumes one queue through one connector instance until ``stopping`` is set."""

    def __init__(
        self,
        *,
        app: App,
        route: Route[Any],
        connector_class: ConnectorFactory[Any, Any],
        connector_config: GenericConnectorConfig,
        stopping: asyncio.Event,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.app = app
        self.route = route
        self.probe = WorkerProbe(app, route)
        self._connector_class = connector_class
        self._connector_config = connector_config
        self._stopping = stopping
        self._middleware = tuple(middleware)
        self._delayed: dict[int, tuple[asyncio.Task[None], bytes]] = {}
        # Dead letters whose publish failed, retried until it works (their message unacked).
        self._dead_retries: dict[int, asyncio.Task[None]] = {}
        self._log = {
            "connector": route.connector_name,
            "queue": route.queue_name,
            "handler": route.handler_name,
        }
        self.connector: Connector[Any, Any] | None = None
        # The connector's optional capabilities, found once when it is built.
        self.capabilities = Capabilities()
        self._locate: Locate | None = None  # its message_metadata, for the message contexts
        self._fetching = False
        self._fetch_given_up = False
        self._stop_began: float | None = None  # loop.time() when ``stopping`` was noticed

    def add_outer_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware`` outside all others (metrics, the test kit's recorder)."""
        self._middleware = (middleware, *self._middleware)

    async def run(self) -> None:
        """Run until stopped; connector start-up errors propagate, fetch errors back off."""
        route = self.route
        config = route.config
        probe = self.probe
        connector = self._connector_class(
            connector_config=self._connector_config, queue_name=route.queue_name, config=config
        )
        self.connector = connector
        self.capabilities = capabilities(connector)
        self._locate = self.capabilities.metadata
        await connector.on_start()
        logger.info(
            "consuming queue %r with %s (connector %r)",
            route.queue_name,
            route.handler_name,
            route.connector_name,
            extra=self._log,
        )
        next_delivery = 0
        failures = 0
        watcher = asyncio.ensure_future(self._give_fetch_up_on_stop(asyncio.current_task()))
        try:
            if config.max_concurrency is not None:
                # Returns once stopping is set: the chunk loop below then does not run.
                await self._consume_concurrently(connector, config.max_concurrency)
            while not self._stopping.is_set():
                try:
                    fetch_started = time.monotonic()
                    chunk = await self._fetch(connector, config.max_chunk_size)
                except Exception as exc:
                    failures += 1
                    await self._sleep_unless_stopping(self._fetch_failed(exc, failures))
                    continue
                failures = 0
                if not chunk:
                    await self._idle_after(fetch_started)
                    continue
                base = next_delivery
                next_delivery += len(chunk)
                # Counted per chunk rather than per message: the chunk is in flight until acked.
                probe.inflight += len(chunk)
                try:
                    await self._handle_chunk(connector, chunk, base)
                finally:
                    probe.inflight -= len(chunk)
        finally:
            watcher.cancel()
            if self._stopping.is_set():
                # The close shares the deadline serve() drains the handlers by.
                began = self._stop_began
                if began is None:
                    began = asyncio.get_running_loop().time()
                STOP_DEADLINE.set(began + self.app.shutdown_timeout)
            try:
                await self._flush_delayed(connector)
                self._drop_dead_retries()
                await self._return_held(connector)
            finally:
                # Also when the drain's cancellation lands in a flush: the connector is closed.
                with contextlib.suppress(Exception):
                    await connector.close()
                logger.info("stopped consuming queue %r", route.queue_name, extra=self._log)

    def _fetch_failed(self, exc: Exception, failures: int) -> float:
        """Log a failed fetch (the ``failures``-th in a row); the seconds to back off."""
        backoff = _FETCH_BACKOFF.delay(failures)
        logger.error(
            "fetching from queue %r (connector %r) failed: %s; retrying in %.1fs",
            self.route.queue_name,
            self.route.connector_name,
            describe(exc),
            backoff,
            extra=self._log,
        )
        return backoff

    async def _idle_after(self, fetch_started: float) -> None:
        """After an empty fetch: however little the connector waited (frequency=0), idle must
        not spin."""
        idle = _MIN_EMPTY_FETCH - (time.monotonic() - fetch_started)
        if idle > 0:
            await self._sleep_unless_stopping(idle)

    async def _fetch(self, connector: Connector[Any, Any], max_chunk_size: int) -> Sequence[bytes]:
        """``get_messages``; empty when stopping gave it up (see ``_give_fetch_up_on_stop``)."""
        self._fetching = True
        try:
            return await connector.get_messages(max_chunk_size)
        except asyncio.CancelledError:
            if not self._fetch_given_up:
                raise
            return ()
        finally:
            self.probe.last_poll = time.monotonic()
            self._fetching = False
            if self._fetch_given_up:
                self._fetch_given_up = False
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()

    async def _give_fetch_up_on_stop(self, task: asyncio.Task[Any] | None) -> None:
        """Once stopping is set, cancel a fetch still waiting: waiting for messages that may
        never come must not hold shutdown up for as long as ``frequency``. A cancellation of the
        worker task rather than a racing task per fetch, which would cost every chunk."""
        await self._stopping.wait()
        self._stop_began = asyncio.get_running_loop().time()
        if self._fetching and task is not None:
            self._fetch_given_up = True
            task.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- max_concurrency: handlers in flight, not chunks -------------------------------------

    async def _consume_concurrently(self, connector: Connector[Any, Any], limit: int) -> None:
        """Until stopped: keep up to ``limit`` handlers in flight, each a task that acks its
        message once finished, and fetch again (asking for at most the free slots, so never
        more than ``limit`` are handed out unfinished) whenever one is free. A slow message
        holds its slot only. Stopping ends the fetching; the handlers in flight finish (serve's
        drain bounds that by ``shutdown_timeout`` and cancels this task: then they are
        cancelled, and their messages stay unacked). A handler that raises CancelledError itself
        stops the worker, as in chunk mode."""
        chunk_limit = self.route.config.max_chunk_size
        running: set[asyncio.Task[None]] = set()
        stop = asyncio.ensure_future(self._stopping.wait())
        worker = asyncio.current_task()
        cancelling = False  # set once this loop cancels the handlers itself
        next_delivery = 0
        failures = 0

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if task.cancelled():
                if not cancelling and worker is not None:
                    worker.cancel("a handler raised CancelledError; its worker stopped")
                return
            exc = task.exception()
            if exc is not None:
                logger.error(
                    "handling a message of %s failed in romeways: %s",
                    self.route.where(),
                    describe(exc),
                    exc_info=exc,
                    extra=self._log,
                )

        try:
            while not self._stopping.is_set():
                free = limit - len(running)
                if free <= 0:
                    await asyncio.wait([*running, stop], return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    fetch_started = time.monotonic()
                    chunk = await self._fetch(connector, min(chunk_limit, free))
                except Exception as exc:
                    failures += 1
                    await self._sleep_unless_stopping(self._fetch_failed(exc, failures))
                    continue
                failures = 0
                if not chunk:
                    await self._idle_after(fetch_started)
                    continue
                self._start_handlers(connector, chunk, next_delivery, running, done)
                next_delivery += len(chunk)
            if running:
                await asyncio.wait(running)
        finally:
            stop.cancel()
            cancelling = True
            if running:
                for task in running:
                    task.cancel()
                # A moment for them to unwind before the connector closes under them.
                await asyncio.wait(running, timeout=_UNWIND_WAIT)

    def _start_handlers(
        self,
        connector: Connector[Any, Any],
        chunk: Sequence[bytes],
        base: int,
        running: set[asyncio.Task[None]],
        done: Callable[[asyncio.Task[None]], object],
    ) -> None:
        """A task per message of the chunk (message ``i`` is delivery ``base + i``); the
        connector's ``spent_deliveries`` is asked once for the whole chunk, as in chunk mode."""
        spent_of = self.capabilities.spent
        spent = spent_of(base, len(chunk)) if spent_of is not None else None
        codec = self.route.codec
        fresh = codec.fresh_decoder(chunk)
        decode: Decode = codec.decode if fresh is None else _fresh_message(fresh)
        probe = self.probe
        probe.inflight += len(chunk)
        handling = probe.handling
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for delivery, data in enumerate(chunk, base):
            handling[delivery] = now
            task = loop.create_task(self._handle_and_ack(connector, data, delivery, decode, spent))
            running.add(task)
            task.add_done_callback(done)

    async def _handle_and_ack(
        self,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        decode: Decode,
        spent: Mapping[int, str] | None,
    ) -> None:
        """One message with ``max_concurrency``: handle it and, once finished, ack it alone
        (the connectors keep at-least-once for acks out of order: Kafka commits only the
        finished prefix of each partition)."""
        probe = self.probe
        try:
            if await self._handle(connector, data, delivery, decode, spent):
                await self._ack(connector, range(delivery, delivery + 1))
        finally:
            probe.inflight -= 1
            probe.handling.pop(delivery, None)

    # -- handling a chunk -------------------------------------------------------------------

    async def _handle_chunk(
        self, connector: Connector[Any, Any], chunk: Sequence[bytes], base: int
    ) -> None:
        """Handle the chunk's messages, one after the other (``sequential``) or concurrently as
        ``asyncio.gather`` would, then ack those finished (also on cancellation: what finished
        is acked, what was interrupted is not).

        Concurrently without a task per message while handlers finish without waiting: each
        runs in this task, and once one waits (gives the loop control), the rest of the chunk
        starts as tasks. Message ``i`` of the chunk is delivery ``base + i``.

        A connector that counts deliveries may name, through its optional
        ``spent_deliveries(first, count)``, messages of the chunk delivered more often than their
        budget without finishing (a worker died handling them each time): those are
        dead-lettered with its reason instead of handled again."""
        route = self.route
        if route.batch:
            await self._handle_batch(connector, chunk, base)
            return
        spent_of = self.capabilities.spent
        spent = spent_of(base, len(chunk)) if spent_of is not None else None
        handler = route.handler
        probe, locate = self.probe, self._locate
        codec = route.codec
        fresh = codec.fresh_decoder(chunk)
        decode: Decode = codec.decode if fresh is None else _fresh_message(fresh)
        # Inline: no middleware and no deadline to set up around each handler call.
        inline = not spent and not self._middleware and route.config.handler_timeout is None
        unfinished: list[int] = []  # handled in this task but not finished (resend pending)
        in_tasks: list[int] = []  # finished in the tasks of the chunk's rest
        rest: list[asyncio.Task[None]] = []
        current = base  # the delivery being handled in this task
        through = base  # one past the last delivery this task is through with
        loop = asyncio.get_running_loop()

        async def handle_in_task(delivery: int, data: bytes) -> None:
            if await self._handle(connector, data, delivery, decode, spent):
                in_tasks.append(delivery)

        def start_rest() -> None:
            rest.extend(
                loop.create_task(handle_in_task(delivery, chunk[delivery - base]))
                for delivery in range(current + 1, base + len(chunk))
            )

        concurrent = len(chunk) > 1 and not route.config.sequential
        starter = loop.call_soon(start_rest) if concurrent else None  # runs only if one waits
        # Inline, the messages' context is a cursor moved along (see ChunkCursor); a new one
        # after a handler that scheduled something, or after each with a loop not watchable.
        queues = _loop_queues(loop)
        watch = queues is not None
        ready, timers = queues or ((), ())
        queued = len(ready) + len(timers) if watch else -1
        cursor = ChunkCursor(probe, connector, locate)
        token = CURRENT_MESSAGE.set(cursor if inline else None)
        try:
            for current, data in enumerate(chunk, base):
                if not inline:
                    if not await self._handle(connector, data, current, decode, spent):
                        unfinished.append(current)
                else:
                    # The body of _handle, inline: a coroutine per message costs as much as
                    # the rest of the per-message work here.
                    try:
                        message = decode(data) if fresh is None else Message(payload=fresh(data))
                    except Exception as exc:
                        cursor.delivery, cursor.message = current, None
                        if not await self._undecodable(data, exc):
                            unfinished.append(current)
                    else:
                        cursor.delivery, cursor.message = current, message
                        try:
                            await handler(message)
                        except Exception as exc:
                            if not await self._failed(connector, message, data, current, exc):
                                unfinished.append(current)
                    if not watch or len(ready) + len(timers) != queued:
                        # Something scheduled may read this message's context later: leave
                        # the cursor at it.
                        cursor = ChunkCursor(probe, connector, locate)
                        CURRENT_MESSAGE.set(cursor)
                        queued = len(ready) + len(timers) if watch else -1
                if rest:
                    break
            through = current + 1
            if rest:
                await asyncio.gather(*rest)
        except BaseException:
            for task in rest:
                task.cancel()
            raise
        finally:
            # Interrupted (cancelled, or a BaseException from a handler): ``through`` is still
            # ``base`` if it happened in the loop, whose ``current`` message is not finished.
            if through == base:
                through = current
            CURRENT_MESSAGE.reset(token)
            if starter is not None:
                starter.cancel()
            if through - base == len(chunk) and not unfinished:
                await self._ack(connector, range(base, through))
            else:
                finished = set(range(base, through)).difference(unfinished)
                finished.update(in_tasks)
                if finished:
                    await self._ack(connector, sorted(finished))

    async def _handle_batch(
        self, connector: Connector[Any, Any], chunk: Sequence[bytes], base: int
    ) -> None:
        """A batch route's chunk: one handler call with the decoded messages as a ``Batch``
        (through the middleware once, within ``handler_timeout``), then each message's outcome:
        its mark, else the handler's exception (resend or dead-letter, as for one message), else
        finished. Undecodable and spent messages are dead-lettered singly, left out of the
        batch. What finished is acked, also on cancellation."""
        route = self.route
        spent_of = self.capabilities.spent
        spent = spent_of(base, len(chunk)) if spent_of is not None else None
        codec, probe, locate = route.codec, self.probe, self._locate
        decode = codec.decode
        fresh = codec.fresh_decoder(chunk)  # as in _handle_chunk: no envelope check per message
        finished: list[int] = []
        try:
            if not spent:
                # The common case, a chunk that decodes: one comprehension, and the messages'
                # contexts made only when asked for (marks, failures, middleware).
                try:
                    if fresh is None:
                        decoded = [decode(data) for data in chunk]
                    else:
                        decoded = [Message(payload=fresh(data)) for data in chunk]
                except Exception:
                    pass
                else:

                    def context_at(index: int) -> MessageContext:
                        return MessageContext(
                            probe, connector, base + index, locate, decoded[index]
                        )

                    batch = Batch(decoded, contexts=context_at, where=route.where())
                    deliveries = range(base, base + len(chunk))
                    await self._call_batch(connector, batch, deliveries, chunk, None, finished)
                    return
            # Some message does not decode or is spent: those are dead-lettered singly, each
            # in its own context, and the rest is the batch.
            messages: list[Message[Any]] = []
            kept: list[int] = []
            datas: list[bytes] = []
            every: list[MessageContext] = []  # the context of each message of the chunk
            for delivery, data in enumerate(chunk, base):
                ctx = MessageContext(probe, connector, delivery, locate)
                every.append(ctx)
                failure: Exception | None = None
                if not spent or delivery not in spent:
                    try:
                        message = decode(data)
                    except Exception as exc:
                        failure = exc
                    else:
                        ctx.message = message
                        messages.append(message)
                        kept.append(delivery)
                        datas.append(data)
                        continue
                token = CURRENT_MESSAGE.set(ctx)
                try:
                    if failure is not None:
                        done = await self._undecodable(data, failure)
                    else:
                        assert spent is not None  # not decoded, so spent
                        done = await self._dead_letter(
                            data, self._resend_times(data), spent[delivery]
                        )
                finally:
                    CURRENT_MESSAGE.reset(token)
                if done:
                    finished.append(delivery)
            own = [every[delivery - base] for delivery in kept]
            batch = Batch(messages, contexts=own.__getitem__, where=route.where())
            await self._call_batch(connector, batch, kept, datas, every, finished)
        finally:
            if len(finished) == len(chunk):
                await self._ack(connector, range(base, base + len(chunk)))
            elif finished:
                await self._ack(connector, sorted(finished))

    async def _call_batch(
        self,
        connector: Connector[Any, Any],
        batch: Batch[Any],
        deliveries: Sequence[int],
        datas: Sequence[bytes],
        every: Sequence[MessageContext] | None,
        finished: list[int],
    ) -> None:
        """Call the batch handler once (through the middleware, once per chunk) and apply the
        outcomes; the deliveries finished go into ``finished``. The context, for the handler
        and the middleware, is the batch's first message's with ``batch_size`` set, and
        ``batch_contexts`` every message's of the chunk (``every``; None: the batch's), with
        its outcome once handled. A chunk of which nothing decoded is a batch of 0: the handler
        is not called."""
        route = self.route
        if batch:
            delivery, first = deliveries[0], batch[0]
        else:
            assert every  # a chunk is never empty
            delivery, first = every[0].delivery, None
        ctx = MessageContext(
            self.probe, connector, delivery, self._locate, first, batch_size=len(batch)
        )
        raised: list[Exception] = []
        # A batch route's handler takes the Batch (make_route checked it, batch=True).
        handler = cast("Callable[[Batch[Any]], Awaitable[object]]", route.handler)

        async def call() -> None:
            if not batch:
                ctx.outcome = Outcome.DEAD_LETTERED
                ctx.reason = "no message of the chunk could be decoded"
                return
            try:
                timeout = route.config.handler_timeout
                if timeout is None:
                    await handler(batch)
                else:
                    await _within(timeout, handler(batch))
            except Exception as exc:
                raised.append(exc)
            finally:
                batch.close()
            await self._batch_outcomes(connector, batch, deliveries, datas, raised, finished)
            error = raised[0] if raised else None
            if isinstance(error, ResendException | _HandlerTimedOut):
                ctx.outcome, ctx.reason = Outcome.RESENT, describe(error)
            elif error is not None:
                ctx.outcome, ctx.exception = Outcome.FAILED, error
                ctx.reason = f"handler raised {describe(error)}"

        token = CURRENT_MESSAGE.set(ctx)
        try:
            if not self._middleware:
                await call()
                return
            _ = ctx.metadata  # middleware may keep the context past the ack
            if every is None:
                every = [batch.context_at(index) for index in range(len(batch))]
            ctx.batch_contexts = tuple(every)
            await self._through_chain(ctx, call)
        finally:
            CURRENT_MESSAGE.reset(token)

    async def _batch_outcomes(
        self,
        connector: Connector[Any, Any],
        batch: Batch[Any],
        deliveries: Sequence[int],
        datas: Sequence[bytes],
        raised: Sequence[Exception],
        finished: list[int],
    ) -> None:
        """Each message of a batch its outcome, in its own context (for logs and outcomes)."""
        route = self.route
        exc = raised[0] if raised else None
        if exc is None and not batch.marked:  # the common case: all finished
            finished.extend(deliveries)
            return
        if exc is not None and not isinstance(exc, ResendException | _HandlerTimedOut):
            logger.error(
                "%s failed on a batch of %d message(s): %s",
                route.where(),
                len(batch),
                describe(exc),
                exc_info=exc,
                extra=self._log,
            )
        for index, message in enumerate(batch):
            delivery, data = deliveries[index], datas[index]
            mark = batch.mark_of(index)
            token = CURRENT_MESSAGE.set(batch.context_at(index))
            try:
                if isinstance(mark, Resend):
                    done = await self._resend(
                        connector,
                        message,
                        data,
                        delivery,
                        self._backoff(message) if mark.delay is None else mark.delay,
                        "resent by the batch handler",
                    )
                elif isinstance(mark, DeadLetterMark):
                    done = await self._dead_letter(data, message.rw_resend_times, mark.reason)
                elif exc is None:
                    done = True
                else:
                    done = await self._batch_failed(connector, message, data, delivery, exc)
            finally:
                CURRENT_MESSAGE.reset(token)
            if done:
                finished.append(delivery)

    async def _batch_failed(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        data: bytes,
        delivery: int,
        exc: Exception,
    ) -> bool:
        """An unmarked message of a batch whose handler raised ``exc`` (logged once, for the
        batch): resent (ResendException, a timeout, ``retry_on``) or dead-lettered, as a single
        message would be."""
        return await self._failed(connector, message, data, delivery, exc, log=False)

    async def _handle(
        self,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        decode: Decode,
        spent: Mapping[int, str] | None = None,
    ) -> bool:
        """Handle one message with its context set; True when it is finished (handled, resent
        or dead-lettered). One ``spent`` names is dead-lettered with that reason, unhandled."""
        ctx = MessageContext(self.probe, connector, delivery, self._locate)
        token = CURRENT_MESSAGE.set(ctx)
        try:
            if spent and delivery in spent:
                return await self._dead_letter(data, self._resend_times(data), spent[delivery])
            if not self._middleware:
                return await self._decode_and_call(ctx, connector, data, delivery, decode)
            _ = ctx.metadata  # middleware may keep the context past the ack
            return await self._through_middleware(ctx, connector, data, delivery, decode)
        finally:
            CURRENT_MESSAGE.reset(token)

    async def _decode_and_call(
        self,
        ctx: MessageContext,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        decode: Decode,
    ) -> bool:
        route = self.route
        try:
            message = decode(data)
        except Exception as exc:
            return await self._undecodable(data, exc)
        ctx.message = message
        try:
            timeout = route.config.handler_timeout
            if timeout is None:
                await route.handler(message)
                return True
            await _within(timeout, route.handler(message))
        except Exception as exc:
            return await self._failed(connector, message, data, delivery, exc)
        return True

    def _resend_times(self, data: bytes) -> int:
        """The resend counter in a message's bytes (0 when they do not decode)."""
        try:
            return self.route.codec.decode(data).rw_resend_times
        except Exception:
            return 0

    async def _through_middleware(
        self,
        ctx: MessageContext,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        decode: Decode,
    ) -> bool:
        finished: list[bool] = []

        async def call() -> None:
            finished.append(await self._decode_and_call(ctx, connector, data, delivery, decode))

        await self._through_chain(ctx, call)
        return finished[0] if finished else False

    async def _through_chain(
        self, ctx: MessageContext, call: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``call`` (one message's handling, or a batch's) once inside the middleware chain
        around ``ctx``: a middleware calling ``call_next`` twice handles once; one that fails is
        logged, and ``call`` still runs if it had not started."""
        started: list[bool] = []

        async def innermost() -> HandlingResult:
            if started:  # a middleware called call_next twice: handle once only
                return result_of(ctx, 0.0)
            started.append(True)
            start = time.perf_counter()
            await call()
            return result_of(ctx, time.perf_counter() - start)

        chain: CallNext = innermost
        for middleware in reversed(self._middleware):
            chain = link(middleware, ctx, chain)
        try:
            await chain()
        except Exception as exc:
            logger.error(
                "middleware failed around %s: %s", self.route.where(), describe(exc), exc_info=exc
            )
            if not started:
                await innermost()

    # -- outcomes ---------------------------------------------------------------------------

    async def _undecodable(self, data: bytes, exc: Exception) -> bool:
        return await self._dead_letter(data, 0, f"cannot decode the message: {describe(exc)}")

    async def _failed(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        data: bytes,
        delivery: int,
        exc: Exception,
        *,
        log: bool = True,
    ) -> bool:
        """The handler raised ``exc``: resend (ResendException, a timeout) or dead-letter. This
        must not fail itself: that would take the worker, and its chunk, down with the message.
        ``log=False``: the failure was logged already (once for a batch)."""
        try:
            return await self._failed_unguarded(connector, message, data, delivery, exc, log=log)
        except Exception as bug:
            logger.error(
                "handling the failure of a message of %s failed: %s",
                self.route.where(),
                describe(bug),
                exc_info=bug,
                extra=self._log,
            )
            reason = f"handler raised {describe(exc)}, and handling that failed: {describe(bug)}"
            return await self._dead_letter(data, message.rw_resend_times, reason, raised=exc)

    async def _failed_unguarded(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        data: bytes,
        delivery: int,
        exc: Exception,
        *,
        log: bool = True,
    ) -> bool:
        route = self.route
        config = route.config
        if isinstance(exc, ResendException):
            delay = exc.delay if exc.delay is not None else self._backoff(message)
            return await self._resend(connector, message, data, delivery, delay, "resent")
        if isinstance(exc, _HandlerTimedOut):
            reason = f"handler timed out after {config.handler_timeout}s"
            return await self._resend(
                connector, message, data, delivery, self._backoff(message), reason
            )
        what = describe(exc)
        if config.retry_on and isinstance(exc, config.retry_on):
            return await self._resend(
                connector,
                message,
                data,
                delivery,
                self._backoff(message),
                f"handler raised {what}",
                raised=exc,
            )
        if log:
            logger.error("%s failed: %s", route.where(), what, exc_info=exc, extra=self._log)
        return await self._dead_letter(
            data, message.rw_resend_times, f"handler raised {what}", raised=exc
        )

    def _backoff(self, message: Message[Any]) -> float:
        """The queue's retry_backoff delay for this message's next resend (0 without one)."""
        backoff = self.route.config.retry_backoff
        return 0.0 if backoff is None else backoff.delay(message.rw_resend_times + 1)

    async def _ack(self, connector: Connector[Any, Any], deliveries: Sequence[int]) -> None:
        try:
            await connector.ack(deliveries)
        except Exception as exc:
            logger.error(
                "ack of %d message(s) on queue %r failed: %s; they may be delivered again",
                len(deliveries),
                self.route.queue_name,
                describe(exc),
                extra=self._log,
            )

    async def _resend(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        original: bytes,
        delivery: int,
        delay: float,
        reason: str,
        *,
        raised: Exception | None = None,
    ) -> bool:
        """Resend after ``delay`` seconds, or dead-letter once ``retries`` are spent; ``raised``
        is the handler's exception when it is resent for ``retry_on``."""
        route = self.route
        retries = route.config.retries
        if message.rw_resend_times >= retries:
            return await self._dead_letter(
                original,
                message.rw_resend_times,
                f"{reason}, and the {retries} resend(s) allowed are spent",
                raised=raised,
            )
        try:
            data = route.codec.encode_resend(message)
        except Exception as exc:  # e.g. the handler put something msgspec cannot encode in it
            return await self._dead_letter(
                original,
                message.rw_resend_times,
                f"{reason}, but the message could not be encoded for the resend: {describe(exc)}",
            )
        ctx = current_context()
        if ctx is not None:
            ctx.outcome = Outcome.RESENT
            ctx.reason = reason
            ctx.resend_delay = delay
        logger.log(
            logging.WARNING if raised is not None else logging.INFO,
            "%s: resending after attempt %d of %d (%s); attempt %d in %.2fs",
            route.where(),
            message.attempt,
            retries + 1,
            reason,
            message.attempt + 1,
            delay,
            extra=self._log,
        )
        if delay > 0:
            task = asyncio.create_task(self._resend_later(connector, delivery, data, delay))
            self._delayed[delivery] = (task, data)
            return False
        return await self._send_back(connector, delivery, data)

    async def _send_back(self, connector: Connector[Any, Any], delivery: int, data: bytes) -> bool:
        try:
            await connector.resend(delivery, data)
        except Exception as exc:
            logger.error(
                "resending a message on queue %r failed: %s; it stays unacknowledged",
                self.route.queue_name,
                describe(exc),
                extra=self._log,
            )
            return False
        logger.debug("message resent on queue %r", self.route.queue_name, extra=self._log)
        return True

    async def _resend_later(
        self, connector: Connector[Any, Any], delivery: int, data: bytes, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        self._delayed.pop(delivery, None)
        if await self._send_back(connector, delivery, data):
            await self._ack(connector, [delivery])

    async def _flush_delayed(self, connector: Connector[Any, Any]) -> None:
        """On shutdown, send delayed resends now rather than drop them."""
        pending, self._delayed = self._delayed, {}
        for delivery, (task, data) in pending.items():
            task.cancel()
            if await self._send_back(connector, delivery, data):
                await self._ack(connector, [delivery])

    async def _return_held(self, connector: Connector[Any, Any]) -> None:
        """On shutdown, resends the connector held back (the memory connector's, which found
        its bounded queue full) go back on the queue; those that find no room are dead-lettered
        rather than lost with the worker."""
        return_held = self.capabilities.held
        if return_held is None:
            return
        try:
            unsent = await return_held(_HELD_WAIT)
        except Exception as exc:
            logger.error(
                "putting held resends back on queue %r failed: %s",
                self.route.queue_name,
                describe(exc),
                extra=self._log,
            )
            return
        for data in unsent:
            resend_times = self._resend_times(data)
            reason = (
                f"resent, but queue {self.route.queue_name!r} stayed full for {_HELD_WAIT}s at "
                "shutdown, so the resend could not be put back"
            )
            await self._dead_letter(data, resend_times, reason)

    async def _dead_letter(
        self, data: bytes, resend_times: int, reason: str, *, raised: Exception | None = None
    ) -> bool:
        """Give up on a message; ``raised`` is the handler's exception when that is why. False
        (not finished: not acknowledged) when the hook overran ``dead_letter_timeout``."""
        route = self.route
        ctx = current_context()
        if ctx is not None:
            ctx.outcome = Outcome.FAILED if raised is not None else Outcome.DEAD_LETTERED
            ctx.exception = raised
            ctx.reason = reason
        logger.error(
            "dead-lettered a message of %s after %d resend(s): %s",
            route.where(),
            resend_times,
            reason,
            extra=self._log,
        )
        target = route.dead_letter
        if isinstance(target, DeadLetterQueue):
            info = new_info(route, reason, resend_times, raised)
            key, headers = (ctx.key, ctx.headers) if ctx is not None else (None, ())

            def publish() -> Awaitable[None]:
                return publish_dead_letter(
                    self.app, route, target, data, info, key=key, headers=headers
                )

            what = f"publishing the dead letter to queue {target.queue_name!r}"
            if await self._bounded(what, publish, finished_if_it_fails=False):
                return True
            if ctx is not None and self.connector is not None:
                self._dead_retries[ctx.delivery] = asyncio.create_task(
                    self._publish_later(self.connector, ctx.delivery, what, publish)
                )
            return False
        if target is not None:
            letter = DeadLetter(
                connector_name=route.connector_name,
                queue_name=route.queue_name,
                handler=route.handler_name,
                reason=reason,
                resend_times=resend_times,
                data=data,
            )
            return await self._bounded(
                "the dead-letter hook", lambda: target(letter), finished_if_it_fails=True
            )
        return True

    async def _publish_later(
        self,
        connector: Connector[Any, Any],
        delivery: int,
        what: str,
        publish: Callable[[], Awaitable[None]],
    ) -> None:
        """Retry a failed dead-letter publish with backoff until it works, then ack its
        message: an unreachable dead-letter queue holds the message (and a Kafka partition's
        commits behind it) only as long as the outage lasts. Dropped on shutdown: the message
        is not acked, so it comes again."""
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(_DEAD_LETTER_BACKOFF.delay(attempt))
            if await self._bounded(what, publish, finished_if_it_fails=False):
                self._dead_retries.pop(delivery, None)
                await self._ack(connector, [delivery])
                return

    def _drop_dead_retries(self) -> None:
        retries, self._dead_retries = self._dead_retries, {}
        for task in retries.values():
            task.cancel()
        if retries:
            logger.warning(
                "stopping with %d dead letter(s) of queue %r not published; their messages "
                "stay unacknowledged and come again",
                len(retries),
                self.route.queue_name,
                extra=self._log,
            )

    async def _bounded(
        self, what: str, call: Callable[[], Awaitable[object]], *, finished_if_it_fails: bool
    ) -> bool:
        """A dead-letter hook or publish within ``dead_letter_timeout``: False (the message not
        finished: unacknowledged, so it comes again where the backend redelivers) when it
        overran (then cancelled), or when it raised and ``finished_if_it_fails`` is False (a
        dead-letter publish that failed); a hook that raised is logged, its message finished."""
        route = self.route
        timeout = route.config.dead_letter_timeout
        starts = self.probe.hook_starts
        started = time.monotonic()
        starts.append(started)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await call()
        except TimeoutError as exc:
            if not deadline.expired():  # its own TimeoutError
                return self._dead_letter_failed(what, exc, finished_if_it_fails)
            logger.error(
                "%s of %s did not return within dead_letter_timeout=%ss and was cancelled; the "
                "message stays unacknowledged (delivered again where the backend redelivers, "
                "lost on the memory connector)",
                what,
                route.where(),
                timeout,
                extra=self._log,
            )
            return False
        except Exception as exc:
            return self._dead_letter_failed(what, exc, finished_if_it_fails)
        finally:
            starts.remove(started)
        return True

    def _dead_letter_failed(self, what: str, exc: Exception, finished: bool) -> bool:
        logger.error(
            "%s of queue %r failed: %s%s",
            what,
            self.route.queue_name,
            describe(exc),
            "" if finished else "; the message stays unacknowledged until it works",
            extra=self._log,
        )
        return finished


async def _within(timeout: float, handling: Awaitable[object]) -> None:
    """Await a handler call within the queue's ``handler_timeout``: running past it is
    ``_HandlerTimedOut``; a TimeoutError the handler raised itself stays a failure."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await handling
    except TimeoutError:
        if deadline.expired():
            raise _HandlerTimedOut from None
        raise


def _fresh_message(payload_of: Callable[[bytes], Any]) -> Decode:
    def decode(data: bytes) -> Message[Any]:
        return Message(payload=payload_of(data))

    return decode


def build_workers(
    app: App,
    connector_names: Iterable[str],
    stopping: asyncio.Event,
    *,
    connector_class: ConnectorFactory[Any, Any] | None = None,
    extra_middleware: Sequence[Middleware] = (),
) -> list[Worker]:
    """One worker per route of these connectors, with ``extra_middleware`` outermost and then
    the app's middleware in the order added; ``connector_class`` replaces the registered one."""
    names = set(connector_names)
    middleware = [*extra_middleware, *app.middleware]
    workers: list[Worker] = []
    for route in app.routes:
        if route.connector_name not in names:
            continue
        registration = app.connectors.get(route.connector_name)
        if registration is not None:
            factory: ConnectorFactory[Any, Any] = registration.connector
            config: GenericConnectorConfig = registration.config
        else:
            factory = _missing_connector
            config = GenericConnectorConfig(connector_name=route.connector_name)
        workers.append(
            Worker(
                app=app,
                route=route,
                connector_class=connector_class or factory,
                connector_config=config,
                stopping=stopping,
                middleware=middleware,
            )
        )
    return workers


def _missing_connector(
    *, connector_config: GenericConnectorConfig, queue_name: str, config: GenericQueueConfig
) -> Connector[Any, Any]:
    raise LookupError(f"connector {connector_config.connector_name!r} is not registered")
