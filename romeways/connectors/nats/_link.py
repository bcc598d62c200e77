"""The connection to the NATS servers: connect options (TLS files, the login), one connection
attempt and what its failure means (a refused login or TLS handshake is not retried), start-up
with retries, and the connection's events (lost, back)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import nats.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from ..._errors import ConnectorError
from ..support import OutageLog, describe_exception, start_with_retry
from ._config import NatsConnectorConfig

logger = logging.getLogger("romeways")

STOP_TIMEOUT: Final = 3.0  # how long close() takes at most (see the connector's close())
_ABANDON_TIMEOUT: Final = 0.5  # closing a client whose connect failed (it may hang on a socket)


class CannotConnect(OSError):
    """No server of the list could be reached (nats-py's NoServersError, with the last cause)."""


class Link:
    """One connector's connection: ``client`` and ``js`` once connected (None before and after
    close), ``connected`` while the server is there, and ``outage`` logging its losses."""

    def __init__(self, config: NatsConnectorConfig, where: str) -> None:
        self._config = config
        self._where = where
        self.servers = config.shown_servers()
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self.closing = False  # close() began: losses are not reported
        self.reconnected = False  # since the last probe: check that fetches still deliver
        self.connected = asyncio.Event()
        self.outage = OutageLog(where, f"the NATS server at {self.servers}")
        self._lock = asyncio.Lock()
        self._connect_error: BaseException | None = None

    def options(self) -> dict[str, Any]:
        config = self._config
        try:
            options = config.connect_options()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectorError(
                f"{self._where} could not load its TLS files (tls_cafile, tls_certfile, "
                f"tls_keyfile): {describe_exception(exc)}; check the paths and tls_key_password"
            ) from exc
        if config.credentials is not None:
            if importlib.util.find_spec("nkeys") is None:
                raise ConnectorError(
                    f"{self._where}: a credentials file needs the nkeys package; install it "
                    "with: pip install nkeys"
                )
            if not os.access(config.credentials, os.R_OK):
                raise ConnectorError(
                    f"{self._where} cannot read its credentials file {config.credentials!r}; "
                    "check the path and its permissions"
                )
        return options

    async def connect(self, options: Mapping[str, Any]) -> Client:
        """One connection attempt (each server of the list tried twice); reconnecting for good
        once connected."""
        client = Client()
        self._connect_error = None
        self.connected.clear()
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
            await close_quietly(client, _ABANDON_TIMEOUT)
            if login_refused(exc):
                raise ConnectorError(self._login_refused(exc)) from exc
            if isinstance(exc, nats.errors.SecureConnRequiredError):
                raise ConnectorError(self._tls_failed(exc)) from exc
            if isinstance(exc, nats.errors.NoServersError):
                cause = self._connect_error or exc
                if login_refused(cause):
                    raise ConnectorError(self._login_refused(cause)) from cause
                if isinstance(cause, ssl.SSLError):
                    raise ConnectorError(self._tls_failed(cause)) from cause
                raise CannotConnect(describe_exception(cause)) from cause
            raise
        except ssl.SSLError as exc:
            await close_quietly(client, _ABANDON_TIMEOUT)
            raise ConnectorError(self._tls_failed(exc)) from exc
        except BaseException:
            await close_quietly(client, _ABANDON_TIMEOUT)
            raise
        # From now on nats-py reconnects by itself for as long as the server is away (it reads
        # these options at each reconnection).
        client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._config.reconnect_time_wait,
        )
        self.connected.set()
        return client

    def _tls_failed(self, exc: BaseException) -> str:
        return (
            f"{self._where} could not open a TLS connection to {self.servers}: "
            f"{describe_exception(exc)}; check tls, tls_cafile (the CA that signed the "
            "server's certificate), tls_certfile/tls_keyfile and tls_hostname (not retried)"
        )

    def _login_refused(self, exc: BaseException) -> str:
        config = self._config
        if config.user is not None:
            who = f"the login of user {config.user!r}"
        elif config.token is not None:
            who = "the token"
        elif config.credentials is not None:
            who = f"the credentials in {config.credentials!r}"
        else:
            who = "the connection (it needs a login: user/password, token or credentials)"
        return (
            f"{self._where} could not log in to the NATS server at {self.servers}: the "
            f"server refused {who} ({describe_exception(exc)}); check user, password, token "
            "or credentials (not retried: a wrong login stays wrong)"
        )

    def _context(self, client: Client) -> JetStreamContext:
        return JetStreamContext(client, timeout=self._config.request_timeout)

    async def _with_retry(self, attempt: Callable[[], Awaitable[Client]]) -> Client:
        return await start_with_retry(
            attempt,
            timeout=self._config.startup_timeout,
            retriable=(OSError, nats.errors.TimeoutError),
            where=self._where,
            target=f"the NATS server at {self.servers}",
        )

    async def start(self, setup: Callable[[JetStreamContext], Awaitable[None]]) -> Client:
        """Connect and run ``setup`` (the stream and the consumer), retried with backoff while
        the server or JetStream cannot be reached, up to ``startup_timeout``."""
        options = self.options()

        async def attempt() -> Client:
            client = await self.connect(options)
            try:
                js = self._context(client)
                await setup(js)
            except BaseException:
                await close_quietly(client)
                raise
            self.client, self.js = client, js
            return client

        return await self._with_retry(attempt)

    async def require(self) -> tuple[Client, JetStreamContext]:
        """The connection, opened on first use by an instance that only publishes."""
        if self.client is not None and self.js is not None:
            return self.client, self.js
        async with self._lock:
            if self.client is None or self.js is None:
                options = self.options()
                client = await self._with_retry(lambda: self.connect(options))
                self.client = client
                self.js = self._context(client)
            return self.client, self.js

    # -- connection events ------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if not self.connected.is_set() and self.client is None:
            self._connect_error = exc  # the initial connect's attempts: start_with_retry logs
            return
        if isinstance(exc, nats.errors.SlowConsumerError | nats.errors.OutboundBufferLimitError):
            logger.warning("%s: %s", self._where, describe_exception(exc))
            return
        if not self.closing:
            self.outage.lost(exc)

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        if not self.closing and self.client is not None:
            self.outage.lost(ConnectionError("disconnected"))

    async def _on_reconnected(self) -> None:
        self.connected.set()
        self.reconnected = True
        self.outage.back()


def login_refused(exc: BaseException) -> bool:
    """Whether the server refused the connection's login (nats-py reports it as a bare Error
    from connect(), or as AuthorizationError)."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


async def close_quietly(client: Client, timeout: float = STOP_TIMEOUT) -> None:
    """Close a client within ``timeout``; errors are not raised (it is going away anyway)."""
    if client.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await client.close()
    except Exception as exc:
        logger.debug("closing a NATS client failed: %s", describe_exception(exc))
