"""The RabbitMQ connector: at-least-once consumption of one queue with manual acks (aio-pika).

One consuming connection per queue and worker, and a second one, opened on first use, for
publishing (resends, ``send_messages``, ``romeways.publish``; see ``_publisher``), so that a
broker blocking publishers never holds up the acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final

import aiormq.abc
from aiormq import spec
from aiormq.exceptions import AMQPConnectionError

from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError, RomewaysError
from ..._shutdown import stop_time_left
from ..support import STARTUP_BACKOFF, DeliveryLedger, OutageLog, redact_secrets, start_with_retry
from ._broker import (
    CALL_ERRORS,
    CLIENT_LOGGERS,
    RPC_TIMEOUT,
    STOP_TIMEOUT,
    Names,
    Refused,
    close_quietly,
    declare,
)
from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig, url_password
from ._link import Delivery, Link, give_back, open_link
from ._messages import (
    delivery_count,
    metadata,
    publish_properties,
    redelivered,
    resend_properties,
    tag_of,
)
from ._publisher import Publisher

logger = logging.getLogger("romeways")

# close() ends by the app's shutdown deadline, at most STOP_TIMEOUT away, but may take
# _CLOSE_GRACE past it to give back the unfinished messages in order.
_CLOSE_GRACE: Final = 1.0
_LAG_INTERVAL: Final = 1.0  # seconds between the broker requests behind consumer_lag()


class RabbitMQQueueConnector(AQueueConnector[RabbitMQConnectorConfig, RabbitMQQueueConfig]):
    """Consumes one RabbitMQ queue with manual acks; at-least-once.

    A message is acknowledged only once the worker says it is finished (handled, resent or
    dead-lettered); a lost channel forgets every delivery tag it gave and the broker delivers
    those messages again. A resend is published with publisher confirms and ``mandatory``
    straight back to the queue, before the original is acknowledged. ``close()`` cancels the
    consumer and gives back what is not finished, in order.
    """

    def __init__(
        self,
        *,
        connector_config: RabbitMQConnectorConfig,
        queue_name: str,
        config: RabbitMQQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        redact_secrets(
            (url_password(connector_config.url), connector_config.ssl_password), CLIENT_LOGGERS
        )
        self._names = Names.of(connector_config, config, queue_name)
        self._link: Link | None = None
        self._ledger: DeliveryLedger[Delivery] = DeliveryLedger()
        self._arrived = asyncio.Event()  # a message came, or the link was lost or is back
        self._exhausted: dict[int, str] = {}
        self._limit = config.effective_delivery_limit
        self._outage = OutageLog(self._where(), f"RabbitMQ at {connector_config.where}")
        self._reconnecting: asyncio.Task[None] | None = None
        self._publisher: Publisher | None = None
        self._declared = False
        self._closing = False
        self._lag: dict[str, int] = {}
        self._lag_at: float | None = None
        self._background: set[asyncio.Task[None]] = set()

    def _where(self) -> str:
        return self._names.where

    def _text(self, exc: BaseException) -> str:
        return self._names.text(exc)

    # -- connecting -----------------------------------------------------------------------

    async def _open_link(self) -> Link:
        """A new link, watched: its loss (the connection or channel closed, the consumer
        cancelled by the broker) wakes get_messages."""
        link = await open_link(self._connector_config, self._config, self._names)
        lose = partial(self._on_closed, link)
        link.connection.close_callbacks.add(lose)
        link.channel.close_callbacks.add(lose)
        link.raw.on_consumer_cancel_callbacks.add(partial(self._on_cancelled, link))
        return link

    async def on_start(self) -> None:
        """Connect and declare the queue, retrying with backoff while the broker cannot be
        reached, for ``startup_timeout`` seconds; a refused login or queue fails at once."""
        config = self._connector_config
        self._closing = False
        try:
            self._link = await start_with_retry(
                self._open_link,
                timeout=config.startup_timeout,
                retriable=(AMQPConnectionError, ConnectionError, OSError),
                where=self._where(),
                target=self._names.broker,
            )
        except ConnectorError:
            raise
        except Exception as exc:  # a channel error while declaring, ...
            raise ConnectorError(
                f"{self._where()} could not start against {self._names.broker}: {self._text(exc)}"
            ) from exc
        self._declared = True
        logger.info(
            "%s connected to %s (prefetch %d)",
            self._where(),
            self._names.broker,
            self._config.effective_prefetch,
        )

    # -- losing the link and getting it back ------------------------------------------------

    def _on_closed(self, link: Link, sender: object, exc: BaseException | None) -> None:
        self._lose(link, exc or ConnectionError("the connection was closed"))

    def _on_cancelled(self, link: Link, frame: spec.Basic.Cancel) -> None:
        if frame.consumer_tag == link.consumer_tag and link.lost is None:
            link.consumer_tag = None
            link.cancelled = True
            self._arrived.set()

    async def _consume_again(self, link: Link) -> None:
        """After the broker cancelled the consumer: declare the queue again (or check that it
        is there, with ``declare=False``) and probe before consuming, as after a reconnect."""
        link.cancelled = False
        link.probing = True
        try:
            await declare(link.channel, self._config, self._names)
        except (Refused, *CALL_ERRORS) as exc:
            self._lose(link, exc)
            return
        logger.warning(
            "%s: RabbitMQ cancelled the consumer (was the queue deleted?); %s the queue and "
            "consuming again",
            self._where(),
            "declared" if self._config.declare else "found",
        )

    def _lose(self, link: Link, exc: BaseException) -> None:
        if link.lost is None and not self._closing:
            link.lost = exc
            self._arrived.set()

    def _drop(self, link: Link) -> None:
        """Forget a lost link: its delivery tags mean nothing on another channel (acking one
        there would close that channel), and the broker delivers its unacknowledged messages
        again. Reconnect in the background."""
        exc = link.lost
        self._link = None
        held = len(self._ledger) + len(link.buffer)
        self._ledger.clear()
        self._exhausted = {}
        link.buffer.clear()
        hint = ""
        if "delivery acknowledgement" in str(exc):
            hint = (
                " (a message stayed unacknowledged past the broker's consumer_timeout, 30 "
                "minutes by default: keep handlers and ResendException delays well below it)"
            )
        logger.warning(
            "%s lost its channel to %s: %s%s; the %d message(s) it had not acknowledged are "
            "delivered again; reconnecting",
            self._where(),
            self._names.broker,
            self._text(exc) if exc is not None else "closed",
            hint,
            held,
        )
        self._spawn(close_quietly(link.connection))
        if self._reconnecting is None and not self._closing:
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Open a new link with the kit's backoff until one works (or close() ends it)."""
        attempt = 0
        try:
            while not self._closing:
                try:
                    link = await self._open_link()
                except Exception as exc:
                    attempt += 1
                    self._outage.lost(exc)
                    await asyncio.sleep(STARTUP_BACKOFF.delay(attempt))
                    continue
                if self._stopped():
                    await close_quietly(link.connection)
                    return
                self._link = link
                self._outage.back()
                logger.info("%s reconnected; consuming again", self._where())
                self._arrived.set()
                return
        finally:
            self._reconnecting = None

    def _stopped(self) -> bool:
        """Whether close() began (read anew after each await)."""
        return self._closing

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- consuming ------------------------------------------------------------------------

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        if self._exhausted:
            self._exhausted = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.frequency
        while True:
            link = self._link
            if link is None or link.lost is not None:
                if link is not None:
                    self._drop(link)
                elif self._reconnecting is None and not self._closing:
                    raise ConnectorError(f"{self._where()} is not started (or already closed)")
                if not await self._wait(deadline):
                    return ()
                continue
            if link.cancelled:
                await self._consume_again(link)
                continue
            if link.probing:
                chunk = await self._probe(link)
                if chunk:
                    return chunk
                continue
            if link.consumer_tag is None:
                await self._consume(link)
                continue
            if link.buffer:
                return self._take(link, max_chunk_size)
            if not await self._wait(deadline):
                return ()

    async def _wait(self, deadline: float) -> bool:
        """Wait until something arrives, at most until ``deadline`` (loop time)."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        self._arrived.clear()
        try:
            async with asyncio.timeout(remaining):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    async def _probe(self, link: Link) -> list[bytes]:
        """Take one message with basic.get: a redelivered one is handed out alone; a new one,
        or none, ends probing (the consumer starts)."""
        try:
            message = await link.raw.basic_get(self._config.queue, timeout=RPC_TIMEOUT)
        except CALL_ERRORS as exc:
            self._lose(link, exc)
            return []
        delivery = message.delivery
        if not isinstance(delivery, spec.Basic.GetOk):
            link.probing = False
            return []
        link.window.delivered(tag_of(message))
        if not delivery.redelivered:
            link.probing = False
        return self._hand_out(link, (message,))

    async def _consume(self, link: Link) -> None:
        try:
            ok = await link.raw.basic_consume(
                self._config.queue, partial(self._on_message, link), timeout=RPC_TIMEOUT
            )
        except CALL_ERRORS as exc:
            self._lose(link, exc)
            return
        link.consumer_tag = ok.consumer_tag

    async def _on_message(self, link: Link, message: aiormq.abc.DeliveredMessage) -> None:
        if link.lost is not None:
            return
        delivery = message.delivery
        if isinstance(delivery, spec.Basic.Deliver):
            link.window.delivered(tag_of(message))
            link.buffer.append(message)
            self._arrived.set()

    def _take(self, link: Link, max_chunk_size: int) -> list[bytes]:
        """Up to ``max_chunk_size`` buffered messages in order; a redelivered message goes out
        alone, so that one that killed a worker cannot take a chunk down with it again."""
        buffer = link.buffer
        first = buffer.popleft()
        taken = [first]
        if not redelivered(first):
            while buffer and len(taken) < max_chunk_size and not redelivered(buffer[0]):
                taken.append(buffer.popleft())
        return self._hand_out(link, taken)

    def _hand_out(self, link: Link, messages: Sequence[aiormq.abc.DeliveredMessage]) -> list[bytes]:
        ledger, limit = self._ledger, self._limit
        chunk: list[bytes] = []
        for message in messages:
            tag = tag_of(message)
            delivery = ledger.add(Delivery(message, tag, link))
            if limit is not None and redelivered(message):
                count = delivery_count(message)
                if count is not None and count > limit:
                    self._exhausted[delivery] = (
                        f"RabbitMQ has delivered it {count} times without its being "
                        f"acknowledged, more than delivery_limit={limit}: handling it kept "
                        "ending the worker (killed, out of memory, a lost connection)"
                    )
            chunk.append(message.body)
        return chunk

    def spent_deliveries(self, first: int, count: int) -> Mapping[int, str]:
        """Of the chunk just returned (deliveries ``first`` to ``first + count - 1``), those
        RabbitMQ delivered more than ``delivery_limit`` times (quorum queues count deliveries),
        with the reason: the worker dead-letters them without handling them again."""
        exhausted = self._exhausted
        if not exhausted:
            return exhausted
        return {d: why for d, why in exhausted.items() if first <= d < first + count}

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Acknowledge exactly these deliveries: one ``multiple`` ack for those that end the
        finished prefix of the channel's unacknowledged tags, single acks for the rest; never a
        tag of a lost channel."""
        handles = self._ledger.pop_all(deliveries)
        link = self._link
        if not handles or link is None or link.lost is not None:
            return
        multiple, singles = link.window.finish([h.tag for h in handles if h.link is link])
        try:
            if multiple is not None:
                await link.raw.basic_ack(multiple, multiple=True, wait=False)
            for tag in singles:
                await link.raw.basic_ack(tag, wait=False)
        except CALL_ERRORS as exc:
            self._lose(link, exc)
            raise ConnectorError(
                f"{self._where()} could not acknowledge: {self._text(exc)}; RabbitMQ delivers "
                "those messages again"
            ) from exc

    # -- publishing -----------------------------------------------------------------------

    async def _publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        what: str,
    ) -> None:
        if self._publisher is None:
            declare_first = self._config.declare and not self._declared
            self._publisher = Publisher(
                self._connector_config, self._config, self._names, declare=declare_first
            )
        await self._publisher.publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties, what=what
        )

    async def send_messages(self, message: bytes) -> None:
        await self.publish(message)

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish ``message`` to the queue's exchange with routing key ``key`` (default: the
        queue's ``routing_key``) and ``headers``, persistent, once the broker confirms it
        (``romeways.publish`` uses this). Works on an instance never started."""
        config = self._config
        routing_key = config.publish_routing_key
        if key is not None:
            try:
                routing_key = key.decode()
            except UnicodeDecodeError:
                raise RomewaysError(
                    f"{self._where()}: the key {key!r} is not UTF-8; a RabbitMQ routing key is text"
                ) from None
            if not config.exchange and routing_key != config.queue:
                raise RomewaysError(
                    f"{self._where()} cannot publish with key {key!r}: the queue is published "
                    "through the default exchange, whose routing key is the queue name; set "
                    "the queue config's exchange (and binding_keys) to route by key, or send "
                    "the value in a header"
                )
        await self._publish(
            message,
            exchange=config.exchange,
            routing_key=routing_key,
            properties=publish_properties(headers),
            what="publish a message",
        )

    async def resend(self, delivery: int, message: bytes) -> None:
        """Publish the envelope straight back to this queue (default exchange, ``mandatory``,
        confirmed) with the original's headers and key; raises if RabbitMQ does not store it,
        and the original then stays unacknowledged."""
        handle = self._ledger.get(delivery)
        if handle is None or handle.link is not self._link or handle.link.lost is not None:
            logger.info(
                "%s did not resend delivery %d: the channel it came on was lost, so RabbitMQ "
                "delivers the original again",
                self._where(),
                delivery,
            )
            return
        await self._publish(
            message,
            exchange="",
            routing_key=self._config.queue,
            properties=resend_properties(handle.message),
            what="resend a message",
        )

    # -- what a handler may read ----------------------------------------------------------

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        """Key (the routing key it was published with through an exchange), headers,
        timestamp, position (queue, delivery tag) and delivery count of an unfinished
        delivery."""
        handle = self._ledger.get(delivery)
        if handle is None:
            return None
        return metadata(handle.message, handle.tag, self._config.queue)

    async def consumer_lag(self) -> Mapping[str, int]:
        """``{queue: messages ready}``: what waits in the queue that no consumer has fetched
        (asked of the broker at most once a second, on a channel of its own)."""
        link = self._link
        if link is None or link.lost is not None:
            return {}
        loop = asyncio.get_running_loop()
        if self._lag_at is not None and loop.time() - self._lag_at < _LAG_INTERVAL:
            return self._lag
        self._lag_at = loop.time()
        try:
            if link.probe_channel is None or link.probe_channel.is_closed:
                link.probe_channel = await link.connection.channel(publisher_confirms=False)
            queue = await link.probe_channel.declare_queue(
                self._config.queue, passive=True, timeout=RPC_TIMEOUT
            )
        except CALL_ERRORS:
            link.probe_channel = None
            self._lag = {}
            return {}
        count = queue.declaration_result.message_count
        self._lag = {self._config.queue: count} if count is not None else {}
        return self._lag

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel the consumer, give back every unfinished message in order (one ``multiple``
        nack with requeue), then close the connections: by the app's shutdown deadline, at most
        STOP_TIMEOUT away. What is not given back by then returns when the channel closes."""
        self._closing = True
        left = stop_time_left()
        budget = STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, STOP_TIMEOUT))
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        link, self._link = self._link, None
        publisher, self._publisher = self._publisher, None
        try:
            if link is not None and link.lost is None:
                try:
                    async with asyncio.timeout(budget):
                        await give_back(link, self._config.effective_prefetch)
                except (*CALL_ERRORS, TimeoutError) as exc:
                    logger.warning(
                        "%s could not give back its unfinished messages in order (%s); "
                        "RabbitMQ returns them as the connection closes",
                        self._where(),
                        self._text(exc),
                    )
        finally:
            self._ledger.clear()
            self._exhausted = {}
            for task in list(self._background):
                task.cancel()
            closes = [asyncio.ensure_future(publisher.close())] if publisher is not None else []
            if link is not None:
                closes.append(asyncio.ensure_future(close_quietly(link.connection)))
            if closes:
                await asyncio.wait(closes, timeout=budget)
