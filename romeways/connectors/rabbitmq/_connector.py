"""The RabbitMQ connector: at-least-once consumption of one queue with manual acks (aio-pika).

One consuming connection per queue and worker, and a second one, opened on first use, for
publishing (resends, ``send_messages``, ``romeways.publish``) with publisher confirms and
``mandatory``, so that a broker blocking publishers never holds up the acks.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
from aiormq import spec
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    AuthenticationError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
    DeliveryError,
    InvalidFrameError,
    ProbableAuthenticationError,
    PublishError,
)
from yarl import URL

from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError, RomewaysError
from ..._shutdown import stop_time_left
from ..support import (
    STARTUP_BACKOFF,
    DeliveryLedger,
    OutageLog,
    describe_exception,
    redact_secrets,
    start_with_retry,
)
from ._acks import AckWindow
from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig, url_password

logger = logging.getLogger("romeways")

# Where aio-pika and aiormq log (a filter acts only on the logger it is attached to).
_CLIENT_LOGGERS: Final = (
    "aiormq.connection",
    "aiormq.channel",
    "aio_pika",
    "aio_pika.connection",
    "aio_pika.channel",
    "aio_pika.exchange",
    "aio_pika.queue",
    "aio_pika.message",
)
# How long close() takes at most; it also ends by the app's shutdown deadline, but may take
# _CLOSE_GRACE past it to give back the unfinished messages in order.
_STOP_TIMEOUT: Final = 3.0
_CLOSE_GRACE: Final = 1.0
_LAG_INTERVAL: Final = 1.0  # seconds between the broker requests behind consumer_lag()
_RPC_TIMEOUT: Final = 5.0  # a basic.get, consume, qos or passive declare that takes longer
_HEADER_KEY: Final = "x-romeways-routing-key"  # a resend's original routing key
_COUNT_HEADERS: Final = ("x-delivery-count", "x-acquired-count")
# Connection refused before the AMQP handshake for good: a login, a vhost, access to it.
_REFUSED_CODES: Final = frozenset({403, 530})

# What a failing broker call raises besides AMQP errors: a closed socket, a closed channel.
_CALL_ERRORS: Final = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, TimeoutError)


class _Refused(ConnectorError):
    """The broker refused the connection or the queue for a reason a retry does not mend."""


@dataclass(slots=True, eq=False)
class _Link:
    """One consuming connection: its channel, the delivery tags it has handed out and not
    acknowledged, and the messages the broker pushed that no fetch has taken yet."""

    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    raw: aiormq.abc.AbstractChannel
    window: AckWindow = field(default_factory=AckWindow)
    buffer: deque[aiormq.abc.DeliveredMessage] = field(
        default_factory=deque[aiormq.abc.DeliveredMessage]
    )
    consumer_tag: str | None = None
    # True until the queue gives a message it never delivered before (or none): meanwhile
    # messages are taken one at a time with basic.get, so a message that kills the worker is
    # handled alone and nothing else is prefetched and redelivered with it.
    probing: bool = True
    # Set when the broker cancelled the consumer (the queue was deleted, ...): the channel and
    # its tags are fine, the queue is declared again and the consumer re-created.
    cancelled: bool = False
    lost: BaseException | None = None
    probe_channel: aio_pika.abc.AbstractChannel | None = None


@dataclass(slots=True, eq=False)
class _Delivery:
    """One message handed to the worker, until it is acked (or its channel is lost)."""

    message: aiormq.abc.DeliveredMessage
    tag: int
    link: _Link


@dataclass(slots=True, eq=False)
class _Publisher:
    connection: aio_pika.abc.AbstractConnection
    raw: aiormq.abc.AbstractChannel


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
            (url_password(connector_config.url), connector_config.ssl_password), _CLIENT_LOGGERS
        )
        self._link: _Link | None = None
        self._ledger: DeliveryLedger[_Delivery] = DeliveryLedger()
        self._arrived = asyncio.Event()  # a message came, or the link was lost or is back
        self._exhausted: dict[int, str] = {}
        self._limit = config.effective_delivery_limit
        self._outage = OutageLog(self._where(), f"RabbitMQ at {connector_config.where}")
        self._reconnecting: asyncio.Task[None] | None = None
        self._publisher: _Publisher | None = None
        self._publisher_lock: asyncio.Lock | None = None
        self._declared = False
        self._closing = False
        self._lag: dict[str, int] = {}
        self._lag_at: float | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- naming ---------------------------------------------------------------------------

    def _where(self) -> str:
        return (
            f"RabbitMQ connector {self._connector_config.connector_name!r} "
            f"(queue {self._queue_name!r}, RabbitMQ queue {self._config.queue!r})"
        )

    def _broker(self) -> str:
        return f"RabbitMQ at {self._connector_config.where}"

    def _connection_name(self, role: str) -> str:
        given = self._connector_config.connection_name
        base = given if given is not None else f"romeways {self._connector_config.connector_name}"
        return f"{base}: {role} of queue {self._config.queue} (pid {os.getpid()})"

    # -- connecting -----------------------------------------------------------------------

    async def _connect(self, role: str) -> aio_pika.abc.AbstractConnection:
        """A connection to the broker; a refused login, vhost or TLS handshake raises _Refused
        (no retry mends it), an unreachable broker the client's error."""
        config = self._connector_config
        try:
            context = config.tls()
        except (OSError, ssl.SSLError) as exc:
            raise _Refused(
                f"{self._where()} could not load its TLS files (ssl_cafile, ssl_certfile, "
                f"ssl_keyfile): {describe_exception(exc)}; check the paths and ssl_password"
            ) from exc
        url = URL(config.url).update_query(heartbeat=str(config.heartbeat))
        try:
            async with asyncio.timeout(config.connect_timeout):
                return await aio_pika.connect(
                    url,
                    ssl_context=context,
                    client_properties={"connection_name": self._connection_name(role)},
                )
        except (ProbableAuthenticationError, AuthenticationError) as exc:
            raise _Refused(
                f"{self._where()} could not log in to {self._broker()}: the broker refused the "
                f"login of user {URL(config.url).user!r} ({self._text(exc)}); check the user "
                "and password in url (not retried: a wrong login stays wrong)"
            ) from exc
        except (ConnectionClosed, InvalidFrameError) as exc:
            # aiormq 7 reports the broker closing the connection at Connection.Open (vhost
            # not found, access to it refused) as an unexpected frame.
            if isinstance(exc, ConnectionClosed) and (
                not exc.args or exc.args[0] not in _REFUSED_CODES
            ):
                raise
            raise _Refused(
                f"{self._where()} could not open {self._broker()}: the broker closed the "
                f"connection as it opened the vhost ({self._text(exc)}); check that the vhost "
                "in url exists and that the user may use it (not retried)"
            ) from exc
        except (ssl.SSLError, AMQPConnectionError) as exc:
            failure = _tls_failure(exc)
            if failure is None:
                raise  # unreachable, or the connection ended mid-handshake: worth a retry
            raise _Refused(
                f"{self._where()} could not make a TLS connection to {self._broker()}: "
                f"{describe_exception(failure)}; check ssl_cafile (the CA of the broker's "
                "certificate), the host name in url, the client certificate, and that the port "
                "speaks TLS (not retried)"
            ) from exc

    def _text(self, exc: BaseException) -> str:
        """An exception as text with the url's password masked, should a client put it in."""
        text = describe_exception(exc)
        password = url_password(self._connector_config.url)
        return text.replace(password, "***") if password and len(password) >= 3 else text

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Declare the exchange, the queue (durable, its type and arguments) and the bindings;
        with ``declare=False``, check that the queue exists."""
        config = self._config
        try:
            if not config.declare:
                await channel.declare_queue(config.queue, passive=True, timeout=_RPC_TIMEOUT)
                return
            exchange = None
            if config.exchange:
                exchange = await channel.declare_exchange(
                    config.exchange, config.exchange_type, durable=True, timeout=_RPC_TIMEOUT
                )
            queue = await channel.declare_queue(
                config.queue,
                durable=True,
                arguments=dict(config.queue_arguments()),
                timeout=_RPC_TIMEOUT,
            )
            if exchange is not None:
                for key in config.binding_keys or [config.publish_routing_key]:
                    await queue.bind(exchange, routing_key=key, timeout=_RPC_TIMEOUT)
        except ChannelPreconditionFailed as exc:
            raise _Refused(
                f"{self._where()} could not declare the queue: it exists with other settings "
                f"({self._text(exc)}); give queue_type and arguments as the queue has them, "
                "or set declare=False to use it as it is"
            ) from exc
        except ChannelNotFoundEntity as exc:
            raise _Refused(
                f"{self._where()}: the queue does not exist ({self._text(exc)}); create it, "
                "or leave declare=True so that romeways declares it"
            ) from exc
        except ChannelAccessRefused as exc:
            raise _Refused(
                f"{self._where()}: the broker refused access ({self._text(exc)}); check the "
                "user's permissions on the vhost"
            ) from exc

    async def _open_link(self) -> _Link:
        """Connect, declare the queue and set the prefetch; not consuming yet (see _Link)."""
        connection = await self._connect("consumer")
        try:
            channel = await connection.channel(publisher_confirms=False)
            await self._declare(channel)
            await channel.set_qos(
                prefetch_count=self._config.effective_prefetch, timeout=_RPC_TIMEOUT
            )
            raw = await channel.get_underlay_channel()
        except BaseException:
            await _close_quietly(connection)
            raise
        link = _Link(connection, channel, raw)
        lose = partial(self._on_closed, link)
        connection.close_callbacks.add(lose)
        channel.close_callbacks.add(lose)
        raw.on_consumer_cancel_callbacks.add(partial(self._on_cancelled, link))
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
                target=self._broker(),
            )
        except ConnectorError:
            raise
        except Exception as exc:  # a channel error while declaring, ...
            raise ConnectorError(
                f"{self._where()} could not start against {self._broker()}: {self._text(exc)}"
            ) from exc
        self._declared = True
        logger.info(
            "%s connected to %s (prefetch %d)",
            self._where(),
            self._broker(),
            self._config.effective_prefetch,
        )

    # -- losing the link and getting it back ------------------------------------------------

    def _on_closed(self, link: _Link, sender: object, exc: BaseException | None) -> None:
        self._lose(link, exc or ConnectionError("the connection was closed"))

    def _on_cancelled(self, link: _Link, frame: spec.Basic.Cancel) -> None:
        if frame.consumer_tag == link.consumer_tag and link.lost is None:
            link.consumer_tag = None
            link.cancelled = True
            self._arrived.set()

    async def _consume_again(self, link: _Link) -> None:
        """After the broker cancelled the consumer: declare the queue again (or check that it
        is there, with ``declare=False``) and probe before consuming, as after a reconnect."""
        link.cancelled = False
        link.probing = True
        try:
            await self._declare(link.channel)
        except (_Refused, *_CALL_ERRORS) as exc:
            self._lose(link, exc)
            return
        logger.warning(
            "%s: RabbitMQ cancelled the consumer (was the queue deleted?); %s the queue and "
            "consuming again",
            self._where(),
            "declared" if self._config.declare else "found",
        )

    def _lose(self, link: _Link, exc: BaseException) -> None:
        if link.lost is None and not self._closing:
            link.lost = exc
            self._arrived.set()

    def _drop(self, link: _Link) -> None:
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
            self._broker(),
            self._text(exc) if exc is not None else "closed",
            hint,
            held,
        )
        self._spawn(_close_quietly(link.connection))
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
                    await _close_quietly(link.connection)
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

    async def _probe(self, link: _Link) -> list[bytes]:
        """Take one message with basic.get: a redelivered one is handed out alone; a new one,
        or none, ends probing (the consumer starts)."""
        try:
            message = await link.raw.basic_get(self._config.queue, timeout=_RPC_TIMEOUT)
        except _CALL_ERRORS as exc:
            self._lose(link, exc)
            return []
        delivery = message.delivery
        if not isinstance(delivery, spec.Basic.GetOk):
            link.probing = False
            return []
        link.window.delivered(_tag(message))
        if not delivery.redelivered:
            link.probing = False
        return self._hand_out(link, (message,))

    async def _consume(self, link: _Link) -> None:
        try:
            ok = await link.raw.basic_consume(
                self._config.queue, partial(self._on_message, link), timeout=_RPC_TIMEOUT
            )
        except _CALL_ERRORS as exc:
            self._lose(link, exc)
            return
        link.consumer_tag = ok.consumer_tag

    async def _on_message(self, link: _Link, message: aiormq.abc.DeliveredMessage) -> None:
        if link.lost is not None:
            return
        delivery = message.delivery
        if isinstance(delivery, spec.Basic.Deliver):
            link.window.delivered(_tag(message))
            link.buffer.append(message)
            self._arrived.set()

    def _take(self, link: _Link, max_chunk_size: int) -> list[bytes]:
        """Up to ``max_chunk_size`` buffered messages in order; a redelivered message goes out
        alone, so that one that killed a worker cannot take a chunk down with it again."""
        buffer = link.buffer
        first = buffer.popleft()
        taken = [first]
        if not _redelivered(first):
            while buffer and len(taken) < max_chunk_size and not _redelivered(buffer[0]):
                taken.append(buffer.popleft())
        return self._hand_out(link, taken)

    def _hand_out(
        self, link: _Link, messages: Sequence[aiormq.abc.DeliveredMessage]
    ) -> list[bytes]:
        ledger, limit = self._ledger, self._limit
        chunk: list[bytes] = []
        for message in messages:
            tag = _tag(message)
            delivery = ledger.add(_Delivery(message, tag, link))
            if limit is not None and _redelivered(message):
                count = delivery_count(message)
                if count is not None and count > limit:
                    self._exhausted[delivery] = (
                        f"RabbitMQ has delivered it {count} times without its being "
                        f"acknowledged, more than delivery_limit={limit}: handling it kept "
                        "ending the worker (killed, out of memory, a lost connection)"
                    )
            chunk.append(message.body)
        return chunk

    def exhausted_deliveries(self) -> Mapping[int, str]:
        """The deliveries of the last chunk that RabbitMQ delivered more than
        ``delivery_limit`` times (quorum queues count deliveries), with the reason: the worker
        dead-letters them without handling them again."""
        return self._exhausted

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
        except _CALL_ERRORS as exc:
            self._lose(link, exc)
            raise ConnectorError(
                f"{self._where()} could not acknowledge: {self._text(exc)}; RabbitMQ delivers "
                "those messages again"
            ) from exc

    # -- publishing -----------------------------------------------------------------------

    async def _require_publisher(self) -> _Publisher:
        if self._publisher_lock is None:
            self._publisher_lock = asyncio.Lock()
        async with self._publisher_lock:
            publisher = self._publisher
            if publisher is not None and not publisher.raw.is_closed:
                return publisher
            if publisher is not None:
                self._publisher = None
                self._spawn(_close_quietly(publisher.connection))
            try:
                connection = await self._connect("publisher")
            except (_Refused, *_CALL_ERRORS) as exc:
                raise ConnectorError(
                    f"{self._where()} could not connect to publish: {self._text(exc)}; check "
                    "that the broker is running and that url is right"
                ) from exc
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                if not self._declared:
                    # romeways.publish uses an instance never started: the queue must exist
                    # before the first publish, or that publish is unroutable.
                    await self._declare(channel)
                    self._declared = True
                raw = await channel.get_underlay_channel()
            except BaseException as exc:
                await _close_quietly(connection)
                if isinstance(exc, Exception) and not isinstance(exc, ConnectorError):
                    raise ConnectorError(
                        f"{self._where()} could not open a channel to publish: {self._text(exc)}"
                    ) from exc
                raise
            self._publisher = _Publisher(connection, raw)
            return self._publisher

    async def _publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        what: str,
    ) -> None:
        publisher = await self._require_publisher()
        timeout = self._connector_config.publish_timeout
        try:
            await publisher.raw.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=timeout,
            )
        except PublishError as exc:
            reply = getattr(exc.frame, "reply_text", "returned")
            raise ConnectorError(
                f"{self._where()} could not {what}: RabbitMQ returned it unroutable ({reply}): "
                f"no queue is bound to exchange {exchange!r} with routing key {routing_key!r} "
                "(deleted, or not bound); nothing was stored"
            ) from exc
        except DeliveryError as exc:
            raise ConnectorError(
                f"{self._where()} could not {what}: RabbitMQ refused to store it (nack): the "
                "queue may be full (x-max-length with x-overflow reject-publish) or the broker "
                "short of resources"
            ) from exc
        except TimeoutError as exc:
            raise ConnectorError(
                f"{self._where()} could not {what}: RabbitMQ did not confirm it within "
                f"publish_timeout={timeout:g}s (blocked by a resource alarm, or unreachable); "
                "it may or may not be stored"
            ) from exc
        except _CALL_ERRORS as exc:
            raise ConnectorError(
                f"{self._where()} could not {what}: {self._text(exc)}; check that the broker "
                "is reachable"
            ) from exc

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
        properties = spec.Basic.Properties(
            delivery_mode=2,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.datetime.now(datetime.UTC),
            headers={name: bytearray(value) for name, value in headers} if headers else None,
        )
        await self._publish(
            message,
            exchange=config.exchange,
            routing_key=routing_key,
            properties=properties,
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
            properties=_resend_properties(handle.message),
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
        message = handle.message
        properties = message.header.properties
        raw_headers: Mapping[str, Any] = properties.headers or {}
        key: bytes | None = None
        original = raw_headers.get(_HEADER_KEY)
        if original is not None:
            key = _as_bytes(original)
        elif message.exchange:
            key = (message.routing_key or "").encode()
        stamp = properties.timestamp
        return MessageMetadata(
            key=key,
            headers=tuple(
                (name, _as_bytes(value))
                for name, value in raw_headers.items()
                if name != _HEADER_KEY and name not in _COUNT_HEADERS
            ),
            timestamp=stamp.timestamp() if isinstance(stamp, datetime.datetime) else None,
            position=(("queue", self._config.queue), ("delivery_tag", handle.tag)),
            delivery_count=delivery_count(message),
        )

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
                self._config.queue, passive=True, timeout=_RPC_TIMEOUT
            )
        except _CALL_ERRORS:
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
        _STOP_TIMEOUT away. What is not given back by then returns when the channel closes."""
        self._closing = True
        left = stop_time_left()
        budget = _STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, _STOP_TIMEOUT))
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        link, self._link = self._link, None
        publisher, self._publisher = self._publisher, None
        try:
            if link is not None and link.lost is None:
                try:
                    async with asyncio.timeout(budget):
                        await self._give_back(link)
                except (*_CALL_ERRORS, TimeoutError) as exc:
                    logger.warning(
                        "%s could not give back its unfinished messages in order (%s); "
                        "RabbitMQ returns them as the connection closes",
                        self._where(),
                        self._text(exc),
                    )
        finally:
            self._ledger.clear()
            self._exhausted = {}
            closing = [c.connection for c in (link, publisher) if c is not None]
            for task in list(self._background):
                task.cancel()
            if closing:
                await asyncio.wait(
                    [asyncio.ensure_future(_close_quietly(c)) for c in closing], timeout=budget
                )

    async def _give_back(self, link: _Link) -> None:
        raw = link.raw
        if link.consumer_tag is not None:
            await raw.basic_cancel(link.consumer_tag, timeout=_RPC_TIMEOUT)
            await asyncio.sleep(0)  # deliveries that came before the cancel-ok are recorded
        last = link.window.last_unacked()
        if last is not None:
            await raw.basic_nack(last, multiple=True, requeue=True)
        # A round trip: the broker has taken the acks and the nack before the channel closes.
        await raw.basic_qos(prefetch_count=self._config.effective_prefetch, timeout=_RPC_TIMEOUT)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connect (aiormq wraps it), unless it is one a retry may
    mend (the connection closed mid-handshake)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            if isinstance(seen, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                return None
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tag(message: aiormq.abc.DeliveredMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only a returned message or an empty get has none
        raise ConnectorError("RabbitMQ delivered a message without a delivery tag")
    return tag


def _redelivered(message: aiormq.abc.DeliveredMessage) -> bool:
    delivery = message.delivery
    return isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk) and bool(
        delivery.redelivered
    )


def delivery_count(message: aiormq.abc.DeliveredMessage) -> int | None:
    """How many times RabbitMQ has delivered the message, this time included: 1 for a first
    delivery, the quorum queue's ``x-delivery-count`` (or ``x-acquired-count``, RabbitMQ 4.3+)
    plus one for a redelivery; None for a redelivery from a classic queue (no count)."""
    if not _redelivered(message):
        return 1
    headers = message.header.properties.headers or {}
    counts = [
        value
        for value in (headers.get(name) for name in _COUNT_HEADERS)
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(counts) + 1 if counts else None


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def _resend_properties(message: aiormq.abc.DeliveredMessage) -> spec.Basic.Properties:
    """The original's properties for its resend: persistent, headers kept (without the
    broker's counts), its routing key kept in a header when it was published with one."""
    original = message.header.properties
    headers: dict[str, Any] = {
        name: value
        for name, value in (original.headers or {}).items()
        if name not in _COUNT_HEADERS
    }
    if message.exchange and _HEADER_KEY not in headers:
        headers[_HEADER_KEY] = message.routing_key or ""
    return spec.Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers or None,
        delivery_mode=2,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=datetime.datetime.now(datetime.UTC),
        message_type=original.message_type,
        app_id=original.app_id,
    )


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close a connection within _STOP_TIMEOUT; errors are the connection's own business."""
    try:
        async with asyncio.timeout(_STOP_TIMEOUT):
            await connection.close()
    except (*_CALL_ERRORS, RuntimeError):
        pass
