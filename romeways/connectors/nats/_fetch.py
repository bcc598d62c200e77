"""Fetching from the durable consumer: what is there now, else the first to come within
``frequency``; redeliveries one at a time; and the guard against pull subscriptions that stop
delivering (nats.py #504) or consumers that vanish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext

from ..._errors import ConnectorError, RomewaysError
from ..support import SingleFlight, describe_exception
from ._config import NatsQueueConfig
from ._link import Link
from ._pull import ENDED, Puller, num_delivered, num_pending
from ._setup import set_up

logger = logging.getLogger("romeways")

# A fetch waits at least this long for the server's answer (with frequency=0 too).
_MIN_WAIT: Final = 0.1
_NO_WAIT_TIMEOUT: Final = 1.0  # seconds a "what is there now" request may take at most
_LINGER_MARGIN: Final = 0.02  # a lingering request expires this much before the fetch's end
_PROBE_INTERVAL: Final = 5.0  # while idle, how often the consumer's state is asked for
_MIN_PROBE_GAP: Final = 1.0  # the shortest time between two of those checks


class Fetcher:
    """The pull side of one queue: ``puller`` once started (None after close), the consumer's
    limits as the server has them, and ``lag`` (messages not delivered yet, as of the last
    fetch or probe)."""

    def __init__(self, link: Link, config: NatsQueueConfig, request_timeout: float, where: str):
        self._link = link
        self._config = config
        self._request_timeout = request_timeout
        self._where = where
        self.puller: Puller | None = None
        self.ack_wait = config.ack_wait
        self.max_ack_pending = config.effective_max_ack_pending
        self.lag: int | None = None
        # Fetch one message at a time: at start, and after a redelivery until a first delivery.
        self._careful = True
        self._probe = SingleFlight(self._check_consumer, where=where, what="probe")
        self._last_probe = 0.0
        self._stalled_probes = 0
        self._missing_logged = False

    async def setup(self, js: JetStreamContext) -> None:
        """The stream and the consumer (see ``set_up``), and the consumer's limits."""
        limits = await set_up(js, self._config, self._where, self.max_ack_pending)
        self.ack_wait, self.max_ack_pending = limits

    async def subscribe(self, client: Client) -> None:
        puller = Puller(client, self._config.stream, self._config.durable)
        await puller.subscribe()
        self.puller = puller

    def _require_puller(self) -> tuple[Client, Puller]:
        client, puller = self._link.client, self.puller
        if client is None or puller is None:
            raise ConnectorError(f"{self._where} is not started (or already closed)")
        if client.is_closed:
            raise ConnectorError(
                f"{self._where}: the connection to {self._link.servers} is closed "
                f"({describe_exception(client.last_error or ConnectionError('closed'))}); "
                "restart the worker"
            )
        return client, puller

    async def fetch(self, max_chunk_size: int) -> list[Msg]:
        """Up to ``max_chunk_size`` messages: those the server has for the consumer now, or,
        if none, the first to come within ``frequency`` (and what came with it).

        A redelivered message (its worker died, or was stopped, holding it) comes alone, and
        after one the next fetch asks for a single message until a first delivery comes: so a
        message that kills its worker each time is the only one whose delivery count climbs
        (past ``max_deliveries``, where it is dead-lettered), not the messages that happened to
        share its chunk."""
        client, puller = self._require_puller()
        loop = asyncio.get_running_loop()
        frequency = self._config.frequency
        deadline = loop.time() + max(frequency, _MIN_WAIT)
        buffer = puller.buffer
        limit = min(max_chunk_size, self.max_ack_pending)
        want = 1 if self._careful else limit
        if len(buffer) < want:
            if not client.is_connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._link.connected.wait()
            else:
                await puller.pull(
                    want - len(buffer),
                    linger=None,
                    timeout=min(_NO_WAIT_TIMEOUT, deadline - loop.time()),
                )
                linger = deadline - loop.time() - _LINGER_MARGIN
                if not buffer and frequency > 0 and linger > _LINGER_MARGIN:
                    await puller.pull(1, linger=linger, timeout=deadline - loop.time())
                    status = puller.status
                    if buffer and want > 1 and num_delivered(buffer[0].reply) == 1:
                        # What else is there (not after a redelivery: that one goes alone).
                        await puller.pull(want - len(buffer), linger=None, timeout=_NO_WAIT_TIMEOUT)
                    elif not buffer and status is not None and status[0] not in (*ENDED, "timeout"):
                        # Refused at once (e.g. 409): wait out the fetch rather than spin.
                        logger.debug("%s: pull request ended with %s", self._where, status)
                        await asyncio.sleep(max(0.0, deadline - loop.time()))
        # Nothing awaits from here on: a fetch cancelled on shutdown never leaves messages
        # taken but not returned (those still in the buffer are nak'ed by close()).
        if not buffer:
            self._idle()
            return []
        first = buffer.popleft()
        if num_delivered(first.reply) > 1:
            self._careful = True
            self.lag = num_pending(first.reply)
            return [first]
        self._careful = False
        chunk = [first]
        while buffer and len(chunk) < limit and num_delivered(buffer[0].reply) == 1:
            chunk.append(buffer.popleft())
        self.lag = num_pending(chunk[-1].reply)
        return chunk

    # -- the guard --------------------------------------------------------------------------

    def _idle(self) -> None:
        """After an empty fetch: now and then, right after a reconnect, and again at once when
        the last check looked stalled, check the consumer in the background (the server is
        there, the consumer exists, fetches deliver)."""
        now = time.monotonic()
        since = now - self._last_probe
        due = self._link.reconnected or self._stalled_probes > 0
        if since >= _PROBE_INTERVAL or (due and since >= _MIN_PROBE_GAP):
            self._last_probe = now
            self._probe.request()

    async def _check_consumer(self) -> None:
        """Guard against pull subscriptions that stop delivering (nats.py #504: after a server
        restart): when two checks in a row (a second apart at least) find messages waiting for
        the consumer while nothing reached the subscription for a second, subscribe afresh; a
        consumer that vanished (a server that lost its store) is created again."""
        link = self._link
        client, js, puller = link.client, link.js, self.puller
        if client is None or js is None or puller is None or not client.is_connected:
            return
        link.reconnected = False
        config = self._config
        try:
            info: ConsumerInfo = await js.consumer_info(
                config.stream, config.durable, timeout=self._request_timeout
            )
        except nats.js.errors.NotFoundError:
            await self._consumer_vanished(js)
            return
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            if not link.closing:
                link.outage.lost(exc)
            return
        link.outage.back()
        self._missing_logged = False
        waiting = info.num_pending or 0
        self.lag = waiting
        starving = (
            waiting > 0
            and time.monotonic() - puller.last_received > _MIN_PROBE_GAP
            and not puller.buffer
            and (info.num_ack_pending or 0) < self.max_ack_pending
        )
        self._stalled_probes = self._stalled_probes + 1 if starving else 0
        if self._stalled_probes >= 2:
            self._stalled_probes = 0
            logger.warning(
                "%s: %d message(s) wait for the consumer but the pull subscription delivered "
                "none; subscribing afresh (the guard against nats.py #504)",
                self._where,
                waiting,
            )
            await puller.subscribe()

    async def _consumer_vanished(self, js: JetStreamContext) -> None:
        config = self._config
        if not config.create:
            if not self._missing_logged:
                self._missing_logged = True
                logger.error(
                    "%s: consumer %r of stream %r does not exist any more; nothing is consumed "
                    "until it is created again (create=False)",
                    self._where,
                    config.durable,
                    config.stream,
                )
            return
        logger.warning(
            "%s: consumer %r (or stream %r) is gone from the server; creating it again",
            self._where,
            config.durable,
            config.stream,
        )
        try:
            await self.setup(js)
        except (RomewaysError, OSError) as exc:
            logger.error("%s could not create it again: %s", self._where, exc)
            return
        if self.puller is not None:
            await self.puller.subscribe()
