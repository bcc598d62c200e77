"""Middleware around each handling, and the worker that sets the message context and runs it.

``ObservedWorker`` is the real ``Worker`` (its resend, retries and dead-letter logic unchanged)
with three additions: the message context (``romeways.context()``, log fields) for the time a
message is handled, the outcome of each handling, and the app's middleware chain around it.
With no middleware it adds one small object and a context-variable set per message (the
message's position is looked up only if asked for, and liveness is counted per chunk).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ._config import GenericConnectorConfig, GenericQueueConfig
from ._connector import Connector, ConnectorFactory
from ._context import CURRENT_MESSAGE, MessageContext
from ._message import Message
from ._route import Route
from ._worker import Worker

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("romeways")


class Outcome(enum.StrEnum):
    """How the handling of one delivery ended.

    ``HANDLED``: the handler returned. ``RESENT``: it raised ResendException (or ran past
    ``handler_timeout``) and the message went back on the queue with its counter raised.
    ``DEAD_LETTERED``: given up without a handler failure: the resends allowed were spent, or the
    message could not be decoded. ``FAILED``: the handler raised another exception; the message
    was dead-lettered.
    """

    HANDLED = "handled"
    RESENT = "resent"
    DEAD_LETTERED = "dead-lettered"
    FAILED = "failed"

    @property
    def dead_lettered(self) -> bool:
        """True for the outcomes that dead-lettered the message (DEAD_LETTERED and FAILED)."""
        return self is Outcome.DEAD_LETTERED or self is Outcome.FAILED


@dataclass(frozen=True, slots=True)
class HandlingResult:
    """The result of handling one delivery, given to middleware after it.

    ``duration`` (seconds) covers decoding, the handler and the resend or dead-letter step.
    ``reason`` says why a message was resent or dead-lettered; ``exception`` is what the handler
    raised when the outcome is FAILED."""

    outcome: Outcome
    duration: float
    reason: str | None = None
    exception: Exception | None = None


CallNext = Callable[[], Awaitable[HandlingResult]]


class Middleware:
    """Runs around the handling of every message of an app (``app.add_middleware(m)``).

    Override ``before`` and ``after`` for hooks, or ``__call__`` to wrap the handling (a tracing
    span, a timer); ``call_next()`` runs the rest of the chain and the handling itself and
    returns its ``HandlingResult``. The first middleware added is the outermost. ``ctx`` is the
    message's ``MessageContext`` (also ``romeways.context()``). An exception a middleware raises
    is logged; the message is still handled (once).
    """

    async def __call__(self, ctx: MessageContext, call_next: CallNext) -> HandlingResult:
        await self.before(ctx)
        result = await call_next()
        await self.after(ctx, result)
        return result

    async def before(self, ctx: MessageContext) -> None:
        """Called before a message is decoded and handled."""

    async def after(self, ctx: MessageContext, result: HandlingResult) -> None:
        """Called after a message was handled, resent or dead-lettered."""


class WorkerProbe:
    """One worker as its message contexts and the telemetry see it: names, and liveness (when
    its last poll of the connector came back, how many messages it is handling)."""

    __slots__ = (
        "app",
        "connector_name",
        "frequency",
        "handler",
        "inflight",
        "last_poll",
        "queue_name",
    )

    def __init__(self, app: App, route: Route[Any]) -> None:
        self.app = app
        self.connector_name = route.connector_name
        self.queue_name = route.queue_name
        self.handler = route.handler_name
        self.frequency = route.config.frequency
        self.last_poll: float | None = None
        self.inflight = 0


class ObservedWorker(Worker):
    """The real Worker, with the message context, outcomes and middleware around each handling.

    It hooks ``Worker._handle``, ``_resend`` and ``_dead_letter`` (and wraps the handler) only to
    observe: every decision stays the Worker's."""

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
        self.original_route = route
        self._real_connector_class = connector_class
        self._middleware = tuple(middleware)
        self._position: Callable[[int], tuple[str, int, int] | None] | None = None
        self.probe = WorkerProbe(app, route)
        super().__init__(
            route=route,
            connector_class=self._make_connector,
            connector_config=connector_config,
            stopping=stopping,
        )

    def add_outer_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware`` outside all others (metrics, the test kit's recorder)."""
        self._middleware = (middleware, *self._middleware)

    def _make_connector(
        self,
        *,
        connector_config: GenericConnectorConfig,
        queue_name: str,
        config: GenericQueueConfig,
    ) -> Connector[Any, Any]:
        connector = self._real_connector_class(
            connector_config=connector_config, queue_name=queue_name, config=config
        )
        position: object = getattr(connector, "message_position", None)
        self._position = cast(Any, position) if callable(position) else None
        fetch = connector.get_messages
        probe = self.probe

        async def get_messages(max_chunk_size: int) -> Sequence[bytes]:
            try:
                return await fetch(max_chunk_size)
            finally:
                probe.last_poll = time.monotonic()

        # An instance attribute shadows the method: the probe sees every poll come back.
        setattr(connector, "get_messages", get_messages)  # noqa: B010
        return connector

    async def _handle_chunk(
        self, connector: Connector[Any, Any], chunk: Sequence[bytes], base: int
    ) -> None:
        # Counted per chunk rather than per message: the chunk is in flight until acked.
        probe = self.probe
        probe.inflight += len(chunk)
        try:
            await super()._handle_chunk(connector, chunk, base)
        finally:
            probe.inflight -= len(chunk)

    async def _handle(
        self,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        ctx: MessageContext | None = None,
    ) -> bool:
        ctx = MessageContext(self.probe, connector, delivery, self._position)
        token = CURRENT_MESSAGE.set(ctx)
        try:
            if not self._middleware:
                return await super()._handle(connector, data, delivery, ctx)
            ctx.locate()  # middleware may keep the context past the ack
            return await self._through_middleware(ctx, connector, data, delivery)
        finally:
            CURRENT_MESSAGE.reset(token)

    async def _through_middleware(
        self, ctx: MessageContext, connector: Connector[Any, Any], data: bytes, delivery: int
    ) -> bool:
        finished: list[bool] = []
        handle = super()._handle

        async def innermost() -> HandlingResult:
            if finished:  # a middleware called call_next twice: handle once only
                return result_of(ctx, 0.0)
            start = time.perf_counter()
            finished.append(await handle(connector, data, delivery, ctx))
            return result_of(ctx, time.perf_counter() - start)

        chain: CallNext = innermost
        for middleware in reversed(self._middleware):
            chain = _link(middleware, ctx, chain)
        try:
            await chain()
        except Exception as exc:
            logger.error(
                "middleware failed around %s: %s: %s",
                self.route.where(),
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            if not finished:
                await innermost()
        return finished[0] if finished else False

    async def _resend(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        original: bytes,
        delivery: int,
        delay: float,
        reason: str,
    ) -> bool:
        ctx = CURRENT_MESSAGE.get()
        if ctx is not None:
            ctx.outcome = Outcome.RESENT
            ctx.reason = reason
        return await super()._resend(connector, message, original, delivery, delay, reason)

    async def _dead_letter(
        self, data: bytes, resend_times: int, reason: str, *, raised: Exception | None = None
    ) -> bool:
        ctx = CURRENT_MESSAGE.get()
        if ctx is not None:
            if raised is not None:
                ctx.outcome = Outcome.FAILED
                ctx.exception = raised
            else:
                ctx.outcome = Outcome.DEAD_LETTERED
            ctx.reason = reason
        return await super()._dead_letter(data, resend_times, reason, raised=raised)


def result_of(ctx: MessageContext, duration: float) -> HandlingResult:
    outcome = ctx.outcome or Outcome.HANDLED
    return HandlingResult(
        outcome=outcome,
        duration=duration,
        reason=ctx.reason,
        exception=ctx.exception if outcome is Outcome.FAILED else None,
    )


def _link(middleware: Middleware, ctx: MessageContext, call_next: CallNext) -> CallNext:
    """``middleware`` around ``call_next``; if it raises, that is logged and the rest of the
    chain still runs (once): a broken middleware never loses a message."""

    async def call() -> HandlingResult:
        results: list[HandlingResult] = []

        async def guarded_next() -> HandlingResult:
            if results:  # called twice: the handling runs once only
                return results[0]
            results.append(await call_next())
            return results[0]

        try:
            return await middleware(ctx, guarded_next)
        except Exception as exc:
            logger.error(
                "middleware %s failed: %s: %s",
                type(middleware).__qualname__,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return results[0] if results else await guarded_next()

    return call


def build_workers(
    app: App,
    connector_names: Iterable[str],
    stopping: asyncio.Event,
    *,
    connector_class: ConnectorFactory[Any, Any] | None = None,
    extra_middleware: Sequence[Middleware] = (),
) -> list[ObservedWorker]:
    """One worker per route of these connectors, with ``extra_middleware`` outermost and then
    the app's middleware in the order added; ``connector_class`` replaces the registered one."""
    names = set(connector_names)
    middleware = [*extra_middleware, *app.middleware]
    workers: list[ObservedWorker] = []
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
            ObservedWorker(
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
