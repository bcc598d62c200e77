"""The NATS JetStream connector: at-least-once consumption of a stream through a durable pull
consumer (nats-py).

Each delivery is acked once it is finished; a message a worker holds (a long handler, a delayed
resend, a chunk waiting its turn) is kept alive with in-progress signals, so ``ack_wait`` only
redelivers messages of a worker that died. On close, finished work is flushed to the server and
unfinished messages are nak'ed, so they come back at once, in stream order.

The parts: ``_link`` (connection, login, TLS), ``_setup`` (stream and consumer), ``_fetch``
(fetches, and the guard for nats.py #504) over ``_pull`` (the pull requests), ``_publish``
(publishing and resends).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import nats.errors
from nats.aio.msg import Msg

from ..._config import secret_fields
from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError
from ..._shutdown import stop_time_left
from ..support import DeliveryLedger, describe_exception, redact_secrets
from ._config import NatsConnectorConfig, NatsQueueConfig
from ._fetch import Fetcher
from ._link import STOP_TIMEOUT, Link, close_quietly
from ._publish import KEY_HEADER, Publisher
from ._pull import Puller, num_delivered, stream_sequence

__all__ = ["KEY_HEADER", "NatsQueueConnector"]

logger = logging.getLogger("romeways")

_NATS_LOGGERS: Final = ("nats", "nats.aio.client", "nats.js.kv")
# How long close() takes at most (STOP_TIMEOUT), and past the app's shutdown deadline at least
# (see Kafka's).
_CLOSE_GRACE: Final = 1.0
_DRAIN_TIMEOUT: Final = 0.5  # close(): the most the subscription's drain may take
_NOTHING_SPENT: Final[Mapping[int, str]] = MappingProxyType({})


class NatsQueueConnector(AQueueConnector[NatsConnectorConfig, NatsQueueConfig]):
    """Consumes one JetStream stream through the durable pull consumer ``durable`` (shared by
    every process with that durable), and publishes resends and ``send_messages`` to
    ``subject`` with a message id, awaiting the server's PubAck.

    At-least-once: a delivery is acked only once it is finished; what a killed worker held is
    delivered again after ``ack_wait``, what a stopped one held at once (nak).
    """

    def __init__(
        self,
        *,
        connector_config: NatsConnectorConfig,
        queue_name: str,
        config: NatsQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        redact_secrets(
            [
                *(getattr(connector_config, name) for name in secret_fields(connector_config)),
                *connector_config.url_secrets(),
            ],
            _NATS_LOGGERS,
        )
        self._where = (
            f"NATS connector {connector_config.connector_name!r} (queue {queue_name!r}, stream "
            f"{config.stream!r}, durable {config.durable!r})"
        )
        timeout = connector_config.request_timeout
        self._link = Link(connector_config, self._where)
        self._fetcher = Fetcher(self._link, config, timeout, self._where)
        self._publisher = Publisher(self._link, config, timeout, self._where)
        self._ledger: DeliveryLedger[Msg] = DeliveryLedger()
        self._consuming = False  # on_start() ran and close() did not
        self._keep_alive: asyncio.Task[None] | None = None
        # Deliveries past max_deliveries, with why (for the worker's spent_deliveries()).
        self._spent: dict[int, str] = {}

    async def on_start(self) -> None:
        """Connect, make sure the stream and the durable consumer exist (creating them with
        ``create=True``), and start the pull subscription; retried with backoff while the
        server or JetStream cannot be reached, up to ``startup_timeout``."""
        fetcher = self._fetcher
        client = await self._link.start(fetcher.setup)
        await fetcher.subscribe(client)
        self._consuming = True
        if self._config.in_progress:
            self._keep_alive = asyncio.ensure_future(self._keep_held_alive())
        logger.info(
            "%s connected to %s (ack_wait %.1fs, max_ack_pending %d)",
            self._where,
            self._link.servers,
            fetcher.ack_wait,
            fetcher.max_ack_pending,
        )

    # -- consuming --------------------------------------------------------------------------

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        """Up to ``max_chunk_size`` messages: those the server has for the consumer now, or,
        if none, the first to come within ``frequency`` (and what came with it).

        A redelivered message (its worker died, or was stopped, holding it) is handed out
        alone, and after one the next fetch asks for a single message until a first delivery
        comes: so a message that kills its worker each time is the only one whose delivery
        count climbs (past ``max_deliveries``, where ``spent_deliveries`` names it for the
        worker to dead-letter), not the messages that happened to share its chunk."""
        if not self._consuming:
            raise ConnectorError(f"{self._where} is not started (or already closed)")
        chunk = await self._fetcher.fetch(max_chunk_size)
        if not chunk:
            return ()
        first = chunk[0]
        if len(chunk) == 1 and (delivered := num_delivered(first.reply)) > 1:
            delivery = self._ledger.add(first)
            if delivered > self._config.max_deliveries:
                self._spent[delivery] = self._spent_reason(first, delivered)
            return [first.data]
        self._ledger.add_all(chunk)
        return [msg.data for msg in chunk]

    def spent_deliveries(self, first: int, count: int) -> Mapping[int, str]:
        """The deliveries of ``first`` to ``first + count - 1`` whose messages were delivered
        more than ``max_deliveries`` times (each time their worker crashed, was killed or was
        stopped with them), with why: the worker dead-letters them instead of handling them
        again, and their ack terminates them (``+TERM``)."""
        spent = self._spent
        if not spent:
            return _NOTHING_SPENT
        return {d: why for d, why in spent.items() if first <= d < first + count}

    def _spent_reason(self, msg: Msg, delivered: int) -> str:
        return (
            f"delivered {delivered} times without being finished (max_deliveries="
            f"{self._config.max_deliveries}): each time its worker crashed, was killed or "
            f"stopped while holding it (stream sequence {stream_sequence(msg.reply)})"
        )

    # -- acks and in-progress signals -------------------------------------------------------

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Ack these finished deliveries (fire-and-forget publishes, flushed by close()); a
        spent one (dead-lettered past ``max_deliveries``) is terminated, so the server never
        delivers it again."""
        client = self._link.client
        spent = self._spent_of(deliveries) if self._spent else []
        msgs = self._ledger.pop_all(deliveries)
        if client is None or not (msgs or spent):
            return
        publish = client.publish
        try:
            for msg in msgs:
                await publish(msg.reply)
            for msg in spent:
                await publish(msg.reply, b"+TERM")
        except nats.errors.Error as exc:
            raise ConnectorError(
                f"{self._where} could not ack {len(msgs) + len(spent)} message(s): "
                f"{describe_exception(exc)}; they are delivered again after ack_wait"
            ) from exc

    def _spent_of(self, deliveries: Sequence[int]) -> list[Msg]:
        """The messages of the spent deliveries among these, taken from the ledger."""
        spent = self._spent
        msgs: list[Msg] = []
        for delivery in [d for d in spent if d in deliveries]:
            del spent[delivery]
            msg = self._ledger.pop(delivery)
            if msg is not None:
                msgs.append(msg)
        return msgs

    async def _keep_held_alive(self) -> None:
        """Every quarter of ``ack_wait``: an in-progress signal for each message held (handed
        out and unfinished, or waiting in the buffer), so the server does not deliver it to
        another consumer while a handler, a delayed resend or a dead-letter hook holds it. (A
        quarter leaves room for a loop that runs late.)"""
        interval = self._fetcher.ack_wait / 4
        while True:
            await asyncio.sleep(interval)
            client, puller = self._link.client, self._fetcher.puller
            if client is None or puller is None:
                return
            held = [msg for _, msg in self._ledger.items()]
            held += puller.buffer
            if not held or not client.is_connected:
                continue
            try:
                for msg in held:
                    await client.publish(msg.reply, b"+WPI")
            except nats.errors.Error as exc:
                logger.warning(
                    "%s could not send in-progress signals for %d held message(s): %s",
                    self._where,
                    len(held),
                    describe_exception(exc),
                )

    # -- publishing -------------------------------------------------------------------------

    async def send_messages(self, message: bytes) -> None:
        await self._publisher.publish(message, {}, "send a message")

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish ``message`` to the queue's subject with ``headers`` and ``key`` (as the
        header ``Romeways-Key``), once JetStream confirms it stored it. Works on an instance
        that was never started (it connects on first use)."""
        publisher = self._publisher
        await publisher.publish(message, publisher.headers_of(key, headers), "publish a message")

    async def resend(self, delivery: int, message: bytes) -> None:
        """Publish the envelope with the original's headers and a message id made from the
        original's stream sequence (a retried or repeated resend of it is deduplicated by the
        server), awaiting the PubAck; the worker acks the original after."""
        msg = self._ledger.get(delivery)
        if msg is None:
            raise ConnectorError(f"{self._where} has no delivery {delivery} to resend")
        publisher = self._publisher
        await publisher.publish(message, publisher.resend_headers(msg), "resend a message")

    # -- what the worker may ask about a delivery -------------------------------------------

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        """Headers, key (``Romeways-Key``), stored time, stream and sequence, and how many
        times the server delivered it, of an unfinished delivery."""
        msg = self._ledger.get(delivery)
        if msg is None:
            return None
        meta = msg.metadata
        raw = msg.headers or {}
        key = raw.get(KEY_HEADER)
        return MessageMetadata(
            key=key.encode() if key is not None else None,
            headers=tuple(
                (k, v.encode())
                for k, v in raw.items()
                if k != KEY_HEADER and not k.startswith("Nats-Expected-")
            ),
            timestamp=meta.timestamp.timestamp(),
            position=(("stream", meta.stream), ("sequence", meta.sequence.stream)),
            delivery_count=meta.num_delivered,
        )

    async def consumer_lag(self) -> Mapping[str, int]:
        """Messages of the stream that wait for this consumer and were not delivered yet, as
        of the last fetch or probe (no request)."""
        lag = self._fetcher.lag
        return {} if lag is None else {self._config.stream: lag}

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Flush the acks, stop the subscription, nak every message still held (in stream
        order, so they come back at once and in order), and close the connection; all within
        the app's shutdown deadline (at most STOP_TIMEOUT, at least _CLOSE_GRACE)."""
        link = self._link
        link.closing = True
        self._consuming = False
        left = stop_time_left()
        budget = STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, STOP_TIMEOUT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        client, puller, self._fetcher.puller = link.client, self._fetcher.puller, None
        if self._keep_alive is not None:
            self._keep_alive.cancel()
        held = len(self._ledger) + (len(puller.buffer) if puller is not None else 0)
        try:
            async with asyncio.timeout_at(deadline):
                if client is not None and puller is not None and client.is_connected:
                    # What the server sent before it took the unsubscribe lands in the buffer.
                    await puller.stop(timeout=min(_DRAIN_TIMEOUT, budget / 4))
                unfinished = self._unfinished(puller)
                held = len(unfinished)
                if client is not None and not client.is_connected:
                    raise ConnectionError("the server is away")
                if client is not None:
                    for msg in unfinished:
                        await client.publish(msg.reply, b"-NAK")
                    # A PING/PONG: the server has taken every ack and nak sent before it.
                    await client.flush()
                    held = 0
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            logger.warning(
                "%s could not flush its acks and nak %d unfinished message(s) before closing "
                "(%s); what did not reach the server is delivered again after ack_wait",
                self._where,
                held,
                describe_exception(exc),
            )
        finally:
            self._ledger.clear()
            self._spent.clear()
            link.client = link.js = None
            if client is not None:
                await close_quietly(client, max(0.2, deadline - loop.time()))

    def _unfinished(self, puller: Puller | None) -> list[Msg]:
        """Every message handed out and not acked, and every one delivered but not handed out,
        by stream sequence."""
        msgs = [msg for _, msg in self._ledger.items()]
        if puller is not None:
            msgs += puller.buffer
            puller.buffer.clear()
        return sorted(msgs, key=lambda msg: stream_sequence(msg.reply))
