"""The NATS JetStream connector: at-least-once consumption of a stream through a durable pull
consumer (nats-py).

Each delivery is acked once it is finished; a message a worker holds (a long handler, a delayed
resend, a chunk waiting its turn) is kept alive with in-progress signals, so ``ack_wait`` only
redelivers messages of a worker that died. On close, finished work is flushed to the server and
unfinished messages are nak'ed, so they come back at once, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Protocol, cast

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.client import JetStreamContext

from ..._config import secret_fields
from ..._connector import AQueueConnector, MessageMetadata
from ..._errors import ConnectorError, RomewaysError
from ..._shutdown import stop_time_left
from ..support import (
    DeliveryLedger,
    OutageLog,
    SingleFlight,
    describe_exception,
    redact_secrets,
    start_with_retry,
)
from ._config import NatsConnectorConfig, NatsQueueConfig
from ._pull import ENDED, Puller

logger = logging.getLogger("romeways")

KEY_HEADER: Final = "Romeways-Key"
"""The header a message's ``key`` travels in (NATS has no message keys)."""
_MSG_ID: Final = "Nats-Msg-Id"
# Headers of an original a resend does not carry over: its own id and publish expectations.
_NOT_CARRIED: Final = frozenset({_MSG_ID, "Nats-Expected-Stream", "Nats-Expected-Last-Msg-Id"})
_NATS_LOGGERS: Final = ("nats", "nats.aio.client", "nats.js.kv")
# A fetch waits at least this long for the server's answer (with frequency=0 too).
_MIN_WAIT: Final = 0.1
_NO_WAIT_TIMEOUT: Final = 1.0  # seconds a "what is there now" request may take at most
_LINGER_MARGIN: Final = 0.02  # a lingering request expires this much before the fetch's end
_PROBE_INTERVAL: Final = 5.0  # while idle, how often the consumer's state is asked for
_MIN_PROBE_GAP: Final = 1.0  # the shortest time between two of those checks
_PUBLISH_ATTEMPTS: Final = 3
# How long close() takes at most, and past the app's shutdown deadline at least (see Kafka's).
_STOP_TIMEOUT: Final = 3.0
_CLOSE_GRACE: Final = 1.0
_DRAIN_TIMEOUT: Final = 0.5  # close(): the most the subscription's drain may take
_ABANDON_TIMEOUT: Final = 0.5  # closing a client whose connect failed (it may hang on a socket)
_NOTHING_SPENT: Final[Mapping[int, str]] = MappingProxyType({})


class _JetStreamApi(Protocol):
    """The JetStream management calls used here, as they are called (nats-py also takes
    ``**params`` it leaves unannotated, which strict checkers report)."""

    async def add_stream(self, config: StreamConfig) -> StreamInfo: ...

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo: ...


def _api(js: JetStreamContext) -> _JetStreamApi:
    return cast(_JetStreamApi, js)


class _CannotConnect(OSError):
    """No server of the list could be reached (nats-py's NoServersError, with the last cause)."""


class _JetStreamAway(OSError):
    """JetStream did not answer an API request (starting up, or not enabled)."""


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
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._puller: Puller | None = None
        self._ledger: DeliveryLedger[Msg] = DeliveryLedger()
        self._consuming = False  # on_start() ran and close() did not
        self._closing = False
        self._connect_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._outage = OutageLog(self._where(), f"the NATS server at {self._servers()}")
        self._probe = SingleFlight(self._check_consumer, where=self._where(), what="probe")
        self._last_probe = 0.0
        self._reconnected = False  # since the last probe: check that fetches still deliver
        self._stalled_probes = 0
        self._missing_logged = False
        self._ack_wait = config.ack_wait
        self._max_ack_pending = config.effective_max_ack_pending
        self._lag: int | None = None
        # Fetch one message at a time: at start, and after a redelivery until a first delivery.
        self._careful = True
        self._keep_alive: asyncio.Task[None] | None = None
        # Deliveries past max_deliveries, with why (for the worker's spent_deliveries()).
        self._spent: dict[int, str] = {}
        self._connect_error: BaseException | None = None

    # -- naming, for messages ---------------------------------------------------------------

    def _where(self) -> str:
        return (
            f"NATS connector {self._connector_config.connector_name!r} (queue "
            f"{self._queue_name!r}, stream {self._config.stream!r}, durable "
            f"{self._config.durable!r})"
        )

    def _servers(self) -> str:
        return self._connector_config.shown_servers()

    # -- connecting -------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        config = self._connector_config
        try:
            options = config.connect_options()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectorError(
                f"{self._where()} could not load its TLS files (tls_cafile, tls_certfile, "
                f"tls_keyfile): {describe_exception(exc)}; check the paths and tls_key_password"
            ) from exc
        if config.credentials is not None:
            if importlib.util.find_spec("nkeys") is None:
                raise ConnectorError(
                    f"{self._where()}: a credentials file needs the nkeys package; install it "
                    "with: pip install nkeys"
                )
            if not os.access(config.credentials, os.R_OK):
                raise ConnectorError(
                    f"{self._where()} cannot read its credentials file {config.credentials!r}; "
                    "check the path and its permissions"
                )
        return options

    async def _connect(self, options: Mapping[str, Any]) -> Client:
        """One connection attempt (each server of the list tried twice); reconnecting for good
        once connected."""
        client = Client()
        self._connect_error = None
        self._connected.clear()
        try:
            # allow_reconnect=False and a bound on attempts make connect() give up rather than
            # loop inside itself; start_with_retry paces the attempts instead.
            await client.connect(
                **options,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
            )
        except nats.errors.Error as exc:
            await _close_quietly(client, _ABANDON_TIMEOUT)
            if _login_refused(exc):
                raise ConnectorError(self._login_refused(exc)) from exc
            if isinstance(exc, nats.errors.SecureConnRequiredError):
                raise ConnectorError(self._tls_failed(exc)) from exc
            if isinstance(exc, nats.errors.NoServersError):
                cause = self._connect_error or exc
                if _login_refused(cause):
                    raise ConnectorError(self._login_refused(cause)) from cause
                if isinstance(cause, ssl.SSLError):
                    raise ConnectorError(self._tls_failed(cause)) from cause
                raise _CannotConnect(describe_exception(cause)) from cause
            raise
        except ssl.SSLError as exc:
            await _close_quietly(client, _ABANDON_TIMEOUT)
            raise ConnectorError(self._tls_failed(exc)) from exc
        except BaseException:
            await _close_quietly(client, _ABANDON_TIMEOUT)
            raise
        # From now on nats-py reconnects by itself for as long as the server is away (it reads
        # these options at each reconnection).
        client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._connector_config.reconnect_time_wait,
        )
        self._connected.set()
        return client

    def _tls_failed(self, exc: BaseException) -> str:
        return (
            f"{self._where()} could not open a TLS connection to {self._servers()}: "
            f"{describe_exception(exc)}; check tls, tls_cafile (the CA that signed the "
            "server's certificate), tls_certfile/tls_keyfile and tls_hostname (not retried)"
        )

    def _login_refused(self, exc: BaseException) -> str:
        config = self._connector_config
        if config.user is not None:
            who = f"the login of user {config.user!r}"
        elif config.token is not None:
            who = "the token"
        elif config.credentials is not None:
            who = f"the credentials in {config.credentials!r}"
        else:
            who = "the connection (it needs a login: user/password, token or credentials)"
        return (
            f"{self._where()} could not log in to the NATS server at {self._servers()}: the "
            f"server refused {who} ({describe_exception(exc)}); check user, password, token "
            "or credentials (not retried: a wrong login stays wrong)"
        )

    async def _require_client(self) -> tuple[Client, JetStreamContext]:
        """The connection, opened on first use by an instance that only publishes."""
        if self._client is not None and self._js is not None:
            return self._client, self._js
        async with self._connect_lock:
            if self._client is None or self._js is None:
                options = self._options()
                client = await start_with_retry(
                    lambda: self._connect(options),
                    timeout=self._connector_config.startup_timeout,
                    retriable=(OSError, nats.errors.TimeoutError),
                    where=self._where(),
                    target=f"the NATS server at {self._servers()}",
                )
                self._client = client
                self._js = JetStreamContext(client, timeout=self._connector_config.request_timeout)
            return self._client, self._js

    async def on_start(self) -> None:
        """Connect, make sure the stream and the durable consumer exist (creating them with
        ``create=True``), and start the pull subscription; retried with backoff while the
        server or JetStream cannot be reached, up to ``startup_timeout``."""
        options = self._options()

        async def start() -> Client:
            client = await self._connect(options)
            try:
                js = JetStreamContext(client, timeout=self._connector_config.request_timeout)
                await self._setup(js)
            except BaseException:
                await _close_quietly(client)
                raise
            self._client, self._js = client, js
            return client

        client = await start_with_retry(
            start,
            timeout=self._connector_config.startup_timeout,
            retriable=(OSError, nats.errors.TimeoutError),
            where=self._where(),
            target=f"the NATS server at {self._servers()}",
        )
        puller = Puller(client, self._config.stream, self._config.durable)
        await puller.subscribe()
        self._puller = puller
        self._consuming = True
        if self._config.in_progress:
            self._keep_alive = asyncio.ensure_future(self._keep_held_alive())
        logger.info(
            "%s connected to %s (ack_wait %.1fs, max_ack_pending %d)",
            self._where(),
            self._servers(),
            self._ack_wait,
            self._max_ack_pending,
        )

    async def _setup(self, js: JetStreamContext) -> None:
        """The stream and the consumer: found, or created; errors as ConnectorErrors that say
        what to do (JetStream not answering is retried by the caller)."""
        config = self._config
        try:
            await self._ensure_stream(js)
            info = await self._ensure_consumer(js)
        except nats.js.errors.ServiceUnavailableError as exc:
            raise _JetStreamAway(
                "JetStream does not answer (is the server started with -js, or JetStream "
                "enabled for this account?)"
            ) from exc
        except nats.js.errors.APIError as exc:
            raise ConnectorError(
                f"{self._where()}: JetStream refused to set up the stream or consumer: "
                f"{describe_exception(exc)}; check the stream {config.stream!r}, subject "
                f"{config.subject!r} and durable {config.durable!r} and the account's permissions"
            ) from exc
        consumer = info.config
        if consumer.deliver_subject:
            raise ConnectorError(
                f"{self._where()}: consumer {config.durable!r} is a push consumer (deliver "
                "subject set); romeways needs a pull consumer: delete it or name another durable"
            )
        if consumer.ack_policy not in (None, AckPolicy.EXPLICIT):
            raise ConnectorError(
                f"{self._where()}: consumer {config.durable!r} has ack_policy "
                f"{consumer.ack_policy}; romeways acks each message and needs 'explicit'"
            )
        self._ack_wait = consumer.ack_wait or 30.0
        self._max_ack_pending = consumer.max_ack_pending or self._max_ack_pending
        if self._max_ack_pending < config.max_chunk_size:
            logger.warning(
                "%s: the consumer's max_ack_pending=%d is below max_chunk_size=%d; fetches "
                "return at most %d messages",
                self._where(),
                self._max_ack_pending,
                config.max_chunk_size,
                self._max_ack_pending,
            )
        if consumer.max_deliver not in (None, -1, 0) and consumer.max_deliver <= (
            config.max_deliveries
        ):
            logger.warning(
                "%s: the consumer's max_deliver=%d stops the server from delivering a message "
                "before max_deliveries=%d dead-letters it; such a message stays in the stream "
                "unhandled",
                self._where(),
                consumer.max_deliver,
                config.max_deliveries,
            )

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = self._config
        try:
            info = await js.stream_info(config.stream)
        except nats.js.errors.NotFoundError:
            if not config.create:
                raise ConnectorError(
                    f"{self._where()}: stream {config.stream!r} does not exist; create it (with "
                    f"subject {config.subject!r}) or set create=True"
                ) from None
            await _api(js).add_stream(
                StreamConfig(
                    name=config.stream,
                    subjects=[config.subject],
                    storage=StorageType(config.storage),
                    retention=RetentionPolicy(config.retention),
                    max_age=config.max_age,
                    duplicate_window=config.duplicate_window,
                )
            )
            logger.info("%s created stream %r", self._where(), config.stream)
            return
        subjects = info.config.subjects or []
        if not any(_subject_matches(pattern, config.subject) for pattern in subjects):
            raise ConnectorError(
                f"{self._where()}: stream {config.stream!r} does not take subject "
                f"{config.subject!r} (its subjects: {', '.join(subjects) or 'none'}); give the "
                "queue one of them or add it to the stream"
            )

    async def _ensure_consumer(self, js: JetStreamContext) -> ConsumerInfo:
        config = self._config
        wanted = ConsumerConfig(
            durable_name=config.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            max_ack_pending=config.effective_max_ack_pending,
            max_deliver=-1,
            filter_subject=config.subject,
            deliver_policy=DeliverPolicy(config.deliver_policy),
        )
        try:
            info: ConsumerInfo = await js.consumer_info(config.stream, config.durable)
        except nats.js.errors.NotFoundError:
            if not config.create:
                raise ConnectorError(
                    f"{self._where()}: consumer {config.durable!r} of stream {config.stream!r} "
                    "does not exist; create it (a durable pull consumer with explicit acks) or "
                    "set create=True"
                ) from None
            info = await _api(js).add_consumer(config.stream, wanted)
            logger.info("%s created durable pull consumer %r", self._where(), config.durable)
            return info
        have = info.config
        if config.create and (
            have.ack_wait != config.ack_wait
            or have.max_ack_pending != config.effective_max_ack_pending
        ):
            try:
                changed = dataclasses.replace(
                    have, ack_wait=config.ack_wait, max_ack_pending=config.effective_max_ack_pending
                )
                info = await _api(js).add_consumer(config.stream, changed)
            except nats.js.errors.APIError as exc:
                logger.warning(
                    "%s could not change the consumer to ack_wait=%gs, max_ack_pending=%d (%s); "
                    "using its ack_wait=%ss, max_ack_pending=%s",
                    self._where(),
                    config.ack_wait,
                    config.effective_max_ack_pending,
                    describe_exception(exc),
                    have.ack_wait,
                    have.max_ack_pending,
                )
        return info

    # -- connection events ------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if not self._connected.is_set() and self._client is None:
            self._connect_error = exc  # the initial connect's attempts: start_with_retry logs
            return
        if isinstance(exc, nats.errors.SlowConsumerError | nats.errors.OutboundBufferLimitError):
            logger.warning("%s: %s", self._where(), describe_exception(exc))
            return
        if not self._closing:
            self._outage.lost(exc)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closing and self._client is not None:
            self._outage.lost(ConnectionError("disconnected"))

    async def _on_reconnected(self) -> None:
        self._connected.set()
        self._reconnected = True
        self._outage.back()

    # -- consuming --------------------------------------------------------------------------

    def _require_puller(self) -> tuple[Client, Puller]:
        client, puller = self._client, self._puller
        if client is None or puller is None or not self._consuming:
            raise ConnectorError(f"{self._where()} is not started (or already closed)")
        if client.is_closed:
            raise ConnectorError(
                f"{self._where()}: the connection to {self._servers()} is closed "
                f"({describe_exception(client.last_error or ConnectionError('closed'))}); "
                "restart the worker"
            )
        return client, puller

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        """Up to ``max_chunk_size`` messages: those the server has for the consumer now, or,
        if none, the first to come within ``frequency`` (and what came with it).

        A redelivered message (its worker died, or was stopped, holding it) is handed out
        alone, and after one the next fetch asks for a single message until a first delivery
        comes: so a message that kills its worker each time is the only one whose delivery
        count climbs (past ``max_deliveries``, where ``spent_deliveries`` names it for the
        worker to dead-letter), not the messages that happened to share its chunk."""
        client, puller = self._require_puller()
        loop = asyncio.get_running_loop()
        frequency = self._config.frequency
        deadline = loop.time() + max(frequency, _MIN_WAIT)
        buffer = puller.buffer
        limit = min(max_chunk_size, self._max_ack_pending)
        want = 1 if self._careful else limit
        if len(buffer) < want:
            if not client.is_connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._connected.wait()
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
                    if buffer and want > 1 and _num_delivered(buffer[0].reply) == 1:
                        # What else is there (not after a redelivery: that one goes alone).
                        await puller.pull(want - len(buffer), linger=None, timeout=_NO_WAIT_TIMEOUT)
                    elif not buffer and status is not None and status[0] not in (*ENDED, "timeout"):
                        # Refused at once (e.g. 409): wait out the fetch rather than spin.
                        logger.debug("%s: pull request ended with %s", self._where(), status)
                        await asyncio.sleep(max(0.0, deadline - loop.time()))
        # Nothing awaits from here on: a fetch cancelled on shutdown never leaves messages
        # taken but not returned (those still in the buffer are nak'ed by close()).
        if not buffer:
            self._idle(puller)
            return ()
        first = buffer.popleft()
        delivered = _num_delivered(first.reply)
        if delivered > 1:
            self._careful = True
            self._lag = _num_pending(first.reply)
            delivery = self._ledger.add(first)
            if delivered > self._config.max_deliveries:
                self._spent[delivery] = self._spent_reason(first, delivered)
            return [first.data]
        self._careful = False
        chunk = [first]
        while buffer and len(chunk) < limit and _num_delivered(buffer[0].reply) == 1:
            chunk.append(buffer.popleft())
        self._lag = _num_pending(chunk[-1].reply)
        self._ledger.add_all(chunk)
        return [msg.data for msg in chunk]

    def _idle(self, puller: Puller) -> None:
        """After an empty fetch: now and then, right after a reconnect, and again at once when
        the last check looked stalled, check the consumer in the background (the server is
        there, the consumer exists, fetches deliver)."""
        now = time.monotonic()
        since = now - self._last_probe
        due = self._reconnected or self._stalled_probes > 0
        if since >= _PROBE_INTERVAL or (due and since >= _MIN_PROBE_GAP):
            self._last_probe = now
            self._probe.request()

    async def _check_consumer(self) -> None:
        """Guard against pull subscriptions that stop delivering (nats.py #504: after a server
        restart): when two checks in a row (a second apart at least) find messages waiting for
        the consumer while nothing reached the subscription for a second, subscribe afresh; a
        consumer that vanished (a server that lost its store) is created again."""
        client, js, puller = self._client, self._js, self._puller
        if client is None or js is None or puller is None or not client.is_connected:
            return
        self._reconnected = False
        config = self._config
        try:
            info: ConsumerInfo = await js.consumer_info(
                config.stream, config.durable, timeout=self._connector_config.request_timeout
            )
        except nats.js.errors.NotFoundError:
            await self._consumer_vanished(js)
            return
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            if not self._closing:
                self._outage.lost(exc)
            return
        self._outage.back()
        self._missing_logged = False
        waiting = info.num_pending or 0
        self._lag = waiting
        starving = (
            waiting > 0
            and time.monotonic() - puller.last_received > _MIN_PROBE_GAP
            and not puller.buffer
            and (info.num_ack_pending or 0) < self._max_ack_pending
        )
        self._stalled_probes = self._stalled_probes + 1 if starving else 0
        if self._stalled_probes >= 2:
            self._stalled_probes = 0
            logger.warning(
                "%s: %d message(s) wait for the consumer but the pull subscription delivered "
                "none; subscribing afresh (the guard against nats.py #504)",
                self._where(),
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
                    self._where(),
                    config.durable,
                    config.stream,
                )
            return
        logger.warning(
            "%s: consumer %r (or stream %r) is gone from the server; creating it again",
            self._where(),
            config.durable,
            config.stream,
        )
        try:
            await self._setup(js)
        except (RomewaysError, OSError) as exc:
            logger.error("%s could not create it again: %s", self._where(), exc)
            return
        if self._puller is not None:
            await self._puller.subscribe()

    # -- crash loops ----------------------------------------------------------------------

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
            f"stopped while holding it (stream sequence {_stream_sequence(msg.reply)})"
        )

    # -- acks and in-progress signals -------------------------------------------------------

    async def ack(self, deliveries: Sequence[int]) -> None:
        """Ack these finished deliveries (fire-and-forget publishes, flushed by close()); a
        spent one (dead-lettered past ``max_deliveries``) is terminated, so the server never
        delivers it again."""
        client = self._client
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
                f"{self._where()} could not ack {len(msgs) + len(spent)} message(s): "
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
        interval = self._ack_wait / 4
        while True:
            await asyncio.sleep(interval)
            client, puller = self._client, self._puller
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
                    self._where(),
                    len(held),
                    describe_exception(exc),
                )

    # -- publishing -------------------------------------------------------------------------

    async def send_messages(self, message: bytes) -> None:
        await self._publish(message, {}, "send a message")

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
        carried: dict[str, str] = {}
        for name, value in headers or ():
            carried[name] = self._header_text(name, value)
        if key is not None:
            carried[KEY_HEADER] = self._header_text(KEY_HEADER, key, what="key")
        await self._publish(message, carried, "publish a message")

    def _header_text(self, name: str, value: bytes, what: str = "header") -> str:
        """A header value as NATS carries it: text without line breaks."""
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = "\r"  # refused below
        if "\r" in text or "\n" in text or not name or ":" in name or " " in name:
            label = "key" if what == "key" else f"header {name!r}"
            raise RomewaysError(
                f"{self._where()} cannot publish the {label}: NATS headers are UTF-8 text "
                "without line breaks (and names without ':' or spaces); encode it, e.g. as hex"
            )
        return text

    async def resend(self, delivery: int, message: bytes) -> None:
        """Publish the envelope with the original's headers and a message id made from the
        original's stream sequence (a retried or repeated resend of it is deduplicated by the
        server), awaiting the PubAck; the worker acks the original after."""
        msg = self._ledger.get(delivery)
        if msg is None:
            raise ConnectorError(f"{self._where()} has no delivery {delivery} to resend")
        carried = {k: v for k, v in (msg.headers or {}).items() if k not in _NOT_CARRIED}
        carried[_MSG_ID] = f"romeways-resend:{self._config.stream}:{_stream_sequence(msg.reply)}"
        await self._publish(message, carried, "resend a message")

    async def _publish(self, message: bytes, headers: dict[str, str], what: str) -> PubAck:
        """Publish to the subject and await the PubAck; a PubAck that does not come is retried
        with the same message id (``Nats-Msg-Id``), which the server deduplicates."""
        _, js = await self._require_client()
        config = self._config
        headers.setdefault(_MSG_ID, f"romeways:{uuid.uuid4().hex}")
        created = False
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                ack = await js.publish(
                    config.subject,
                    message,
                    timeout=self._publish_timeout(),
                    stream=config.stream,
                    headers=dict(headers),
                )
            except nats.js.errors.NoStreamResponseError as exc:
                if config.create and not created:
                    created = True  # a publisher before any consumer: create the stream
                    await self._create_stream_for_publish(js, exc)
                    continue
                raise ConnectorError(
                    f"{self._where()} could not {what}: no stream takes subject "
                    f"{config.subject!r}; create stream {config.stream!r} or set create=True"
                ) from exc
            except nats.errors.TimeoutError as exc:
                if attempt == _PUBLISH_ATTEMPTS:
                    raise ConnectorError(
                        f"{self._where()} could not {what}: no PubAck from JetStream after "
                        f"{attempt} tries ({describe_exception(exc)}); check that the server "
                        "is reachable"
                    ) from exc
                logger.warning(
                    "%s got no PubAck to %s (try %d of %d); publishing it again with the same "
                    "message id %r, which JetStream deduplicates",
                    self._where(),
                    what,
                    attempt,
                    _PUBLISH_ATTEMPTS,
                    headers[_MSG_ID],
                )
                continue
            except nats.errors.Error as exc:
                raise ConnectorError(
                    f"{self._where()} could not {what}: {describe_exception(exc)}"
                ) from exc
            if ack.duplicate:
                logger.info(
                    "%s: JetStream already had message id %r (stream sequence %d): deduplicated",
                    self._where(),
                    headers[_MSG_ID],
                    ack.seq,
                )
            return ack
        raise AssertionError("unreachable")  # pragma: no cover

    def _publish_timeout(self) -> float:
        timeout = self._connector_config.request_timeout
        left = stop_time_left()
        return timeout if left is None else max(0.5, min(timeout, left))

    async def _create_stream_for_publish(self, js: JetStreamContext, cause: Exception) -> None:
        try:
            await self._ensure_stream(js)
        except nats.js.errors.APIError as exc:
            raise ConnectorError(
                f"{self._where()} could not create stream {self._config.stream!r} to publish "
                f"to: {describe_exception(exc)}"
            ) from cause

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
        return {} if self._lag is None else {self._config.stream: self._lag}

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Flush the acks, stop the subscription, nak every message still held (in stream
        order, so they come back at once and in order), and close the connection; all within
        the app's shutdown deadline (at most _STOP_TIMEOUT, at least _CLOSE_GRACE)."""
        self._closing = True
        self._consuming = False
        left = stop_time_left()
        budget = _STOP_TIMEOUT if left is None else max(_CLOSE_GRACE, min(left, _STOP_TIMEOUT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        client, puller, self._puller = self._client, self._puller, None
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
                self._where(),
                held,
                describe_exception(exc),
            )
        finally:
            self._ledger.clear()
            self._spent.clear()
            self._client = self._js = None
            if client is not None:
                await _close_quietly(client, max(0.2, deadline - loop.time()))

    def _unfinished(self, puller: Puller | None) -> list[Msg]:
        """Every message handed out and not acked, and every one delivered but not handed out,
        by stream sequence."""
        msgs = [msg for _, msg in self._ledger.items()]
        if puller is not None:
            msgs += puller.buffer
            puller.buffer.clear()
        return sorted(msgs, key=lambda msg: _stream_sequence(msg.reply))


def _login_refused(exc: BaseException) -> bool:
    """Whether the server refused the connection's login (nats-py reports it as a bare Error
    from connect(), or as AuthorizationError)."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


async def _close_quietly(client: Client, timeout: float = _STOP_TIMEOUT) -> None:
    """Close a client within ``timeout``; errors are not raised (it is going away anyway)."""
    if client.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await client.close()
    except Exception as exc:
        logger.debug("closing a NATS client failed: %s", describe_exception(exc))


def _ack_field(reply: str, v1_index: int) -> int:
    """A number of a JetStream ack subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
    <cseq>.<time>.<pending>`` (or the longer form with domain and account hash first)."""
    tokens = reply.split(".")
    index = v1_index if len(tokens) == 9 else v1_index + 2
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return 0


def _num_delivered(reply: str) -> int:
    return _ack_field(reply, 4)


def _stream_sequence(reply: str) -> int:
    return _ack_field(reply, 5)


def _num_pending(reply: str) -> int:
    return _ack_field(reply, 8)


def _subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with ``*`` and ``>`` wildcards) takes ``subject``."""
    want = subject.split(".")
    have = pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)
