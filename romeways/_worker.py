"""The worker loop: one per queue. Fetch a chunk, handle it, resend or dead-letter, ack, repeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._config import GenericConnectorConfig
from ._connector import Connector, ConnectorFactory
from ._errors import ResendException
from ._message import Message
from ._route import DeadLetter, Route

if TYPE_CHECKING:
    from ._context import MessageContext

logger = logging.getLogger("romeways")

_MAX_BACKOFF = 5.0
_MIN_EMPTY_FETCH = 0.05  # seconds an empty fetch takes at least, so an idle worker sleeps


class _HandlerTimedOut(Exception):
    """Internal: the handler ran past the queue's handler_timeout."""


class Worker:
    """Consumes one queue through one connector instance until ``stopping`` is set."""

    def __init__(
        self,
        *,
        route: Route[Any],
        connector_class: ConnectorFactory[Any, Any],
        connector_config: GenericConnectorConfig,
        stopping: asyncio.Event,
    ) -> None:
        self.route = route
        self._connector_class = connector_class
        self._connector_config = connector_config
        self._stopping = stopping
        self._delayed: dict[int, tuple[asyncio.Task[None], bytes]] = {}
        self._log = {
            "connector": route.connector_name,
            "queue": route.queue_name,
            "handler": route.handler_name,
        }
        self.connector: Connector[Any, Any] | None = None
        self._fetching = False
        self._fetch_given_up = False

    async def run(self) -> None:
        """Run until stopped; connector start-up errors propagate, fetch errors back off."""
        route = self.route
        config = route.config
        connector = self._connector_class(
            connector_config=self._connector_config, queue_name=route.queue_name, config=config
        )
        self.connector = connector
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
            while not self._stopping.is_set():
                try:
                    fetch_started = time.monotonic()
                    chunk = await self._fetch(connector, config.max_chunk_size)
                except Exception as exc:
                    failures += 1
                    backoff = min(_MAX_BACKOFF, 0.1 * 2**failures)
                    logger.error(
                        "fetching from queue %r (connector %r) failed: %s: %s; retrying in %.1fs",
                        route.queue_name,
                        route.connector_name,
                        type(exc).__name__,
                        exc,
                        backoff,
                        extra=self._log,
                    )
                    await self._sleep_unless_stopping(backoff)
                    continue
                failures = 0
                if not chunk:
                    # However little the connector waited (frequency=0), idle must not spin.
                    idle = _MIN_EMPTY_FETCH - (time.monotonic() - fetch_started)
                    if idle > 0:
                        await self._sleep_unless_stopping(idle)
                    continue
                base = next_delivery
                next_delivery += len(chunk)
                await self._handle_chunk(connector, chunk, base)
        finally:
            watcher.cancel()
            await self._flush_delayed(connector)
            with contextlib.suppress(Exception):
                await connector.close()
            logger.info("stopped consuming queue %r", route.queue_name, extra=self._log)

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
        if self._fetching and task is not None:
            self._fetch_given_up = True
            task.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle_chunk(
        self, connector: Connector[Any, Any], chunk: Sequence[bytes], base: int
    ) -> None:
        finished: list[int] = []
        try:
            if self.route.config.sequential or len(chunk) == 1:
                for i, data in enumerate(chunk):
                    if await self._handle(connector, data, base + i):
                        finished.append(base + i)
            else:
                await self._handle_concurrently(connector, chunk, base, finished)
        finally:
            # Also on cancellation: what finished is acked, what was interrupted is not.
            if finished:
                await self._ack(connector, sorted(finished))

    async def _handle_concurrently(
        self,
        connector: Connector[Any, Any],
        chunk: Sequence[bytes],
        base: int,
        finished: list[int],
    ) -> None:
        """Handle the chunk's messages concurrently, as ``asyncio.gather`` would, adding each
        delivery to ``finished`` as it finishes (so a cancellation keeps the finished); but with
        no task per message while handlers finish without waiting: each runs in this task, and
        once one waits (gives the loop control), the rest of the chunk starts as tasks."""
        loop = asyncio.get_running_loop()
        rest: list[asyncio.Task[None]] = []
        upcoming = 0

        async def handle_in_task(delivery: int, data: bytes) -> None:
            if await self._handle(connector, data, delivery):
                finished.append(delivery)

        def start_rest() -> None:
            rest.extend(
                loop.create_task(handle_in_task(base + i, chunk[i]))
                for i in range(upcoming, len(chunk))
            )

        starter = loop.call_soon(start_rest)  # runs only if a handler below gives up control
        try:
            while upcoming < len(chunk):
                i = upcoming
                upcoming += 1
                if await self._handle(connector, chunk[i], base + i):
                    finished.append(base + i)
                if rest:
                    break
            if rest:
                await asyncio.gather(*rest)
        except BaseException:
            for task in rest:
                task.cancel()
            raise
        finally:
            starter.cancel()

    async def _ack(self, connector: Connector[Any, Any], deliveries: Sequence[int]) -> None:
        try:
            await connector.ack(deliveries)
        except Exception as exc:
            logger.error(
                "ack of %d message(s) on queue %r failed: %s: %s; they may be delivered again",
                len(deliveries),
                self.route.queue_name,
                type(exc).__name__,
                exc,
                extra=self._log,
            )

    async def _handle(
        self,
        connector: Connector[Any, Any],
        data: bytes,
        delivery: int,
        ctx: MessageContext | None = None,
    ) -> bool:
        """Handle one message; True when it is finished (handled, resent or dead-lettered).
        ``ctx``, the message's context if any, gets the decoded message."""
        route = self.route
        try:
            message = route.codec.decode(data)
        except Exception as exc:
            return await self._dead_letter(
                data, 0, f"cannot decode the message: {type(exc).__name__}: {exc}"
            )
        if ctx is not None:
            ctx.message = message
        try:
            if route.config.handler_timeout is None:  # no deadline to set up per message
                await route.handler(message)
                return True
            deadline = asyncio.timeout(route.config.handler_timeout)
            try:
                async with deadline:
                    await route.handler(message)
            except TimeoutError:
                # Only our deadline is a timeout; a TimeoutError the handler raised is a failure.
                if deadline.expired():
                    raise _HandlerTimedOut from None
                raise
        except ResendException as exc:
            return await self._resend(connector, message, data, delivery, exc.delay, "resent")
        except _HandlerTimedOut:
            reason = f"handler timed out after {route.config.handler_timeout}s"
            return await self._resend(connector, message, data, delivery, 0.0, reason)
        except Exception as exc:
            logger.error(
                "%s failed: %s: %s",
                route.where(),
                type(exc).__name__,
                exc,
                exc_info=exc,
                extra=self._log,
            )
            return await self._dead_letter(
                data,
                message.rw_resend_times,
                f"handler raised {type(exc).__name__}: {exc}",
                raised=exc,
            )
        return True

    async def _resend(
        self,
        connector: Connector[Any, Any],
        message: Message[Any],
        original: bytes,
        delivery: int,
        delay: float,
        reason: str,
    ) -> bool:
        route = self.route
        if message.rw_resend_times >= route.config.retries:
            return await self._dead_letter(
                original,
                message.rw_resend_times,
                f"{reason}, and the {route.config.retries} resend(s) allowed are spent",
            )
        data = route.codec.encode_resend(message)
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
                "resending a message on queue %r failed: %s: %s; it stays unacknowledged",
                self.route.queue_name,
                type(exc).__name__,
                exc,
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

    async def _dead_letter(
        self, data: bytes, resend_times: int, reason: str, *, raised: Exception | None = None
    ) -> bool:
        """Give up on a message; ``raised`` is the handler's exception when that is why."""
        route = self.route
        logger.error(
            "dead-lettered a message of %s after %d resend(s): %s",
            route.where(),
            resend_times,
            reason,
            extra=self._log,
        )
        if route.dead_letter is not None:
            letter = DeadLetter(
                connector_name=route.connector_name,
                queue_name=route.queue_name,
                handler=route.handler_name,
                reason=reason,
                resend_times=resend_times,
                data=data,
            )
            try:
                await route.dead_letter(letter)
            except Exception as exc:
                logger.error(
                    "the dead-letter hook of queue %r failed: %s: %s",
                    route.queue_name,
                    type(exc).__name__,
                    exc,
                    extra=self._log,
                )
        return True
