"""Middleware around the handling of each message, and what it learns of the handling.

The worker (``_worker.py``) runs the chain built here around each message when an app has
middleware; with none, it handles messages without it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._context import MessageContext

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
    raised when the outcome is FAILED; ``delay`` the seconds a RESENT message waits before it
    goes back on the queue (``ResendException(delay=...)``)."""

    outcome: Outcome
    duration: float
    reason: str | None = None
    exception: Exception | None = None
    delay: float | None = None


CallNext = Callable[[], Awaitable[HandlingResult]]
"""What a middleware awaits to run the rest of the chain (and the handler): the result."""


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


def result_of(ctx: MessageContext, duration: float) -> HandlingResult:
    """The result of a handling from what the worker recorded on its context."""
    outcome = ctx.outcome or Outcome.HANDLED
    return HandlingResult(
        outcome=outcome,
        duration=duration,
        reason=ctx.reason,
        exception=ctx.exception if outcome is Outcome.FAILED else None,
        delay=ctx.resend_delay if outcome is Outcome.RESENT else None,
    )


def link(middleware: Middleware, ctx: MessageContext, call_next: CallNext) -> CallNext:
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
