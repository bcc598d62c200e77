"""Publishing to the queue's subject: headers as NATS carries them, a message id on every
message (so a retry after a lost PubAck is deduplicated), and a resend's id made from the
original's stream sequence."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from ..._errors import ConnectorError, RomewaysError
from ..._shutdown import stop_time_left
from ..support import describe_exception
from ._config import NatsQueueConfig
from ._link import Link
from ._pull import stream_sequence
from ._setup import ensure_stream

logger = logging.getLogger("romeways")

KEY_HEADER: Final = "Romeways-Key"
"""The header a message's ``key`` travels in (NATS has no message keys)."""
_MSG_ID: Final = "Nats-Msg-Id"
# Headers of an original a resend does not carry over: its own id and publish expectations.
_NOT_CARRIED: Final = frozenset({_MSG_ID, "Nats-Expected-Stream", "Nats-Expected-Last-Msg-Id"})
_PUBLISH_ATTEMPTS: Final = 3


class Publisher:
    """Publishes to the queue's subject over ``link`` (connecting on first use) and awaits
    JetStream's PubAck."""

    def __init__(self, link: Link, config: NatsQueueConfig, request_timeout: float, where: str):
        self._link = link
        self._config = config
        self._request_timeout = request_timeout
        self._where = where

    def headers_of(
        self, key: bytes | None, headers: Sequence[tuple[str, bytes]] | None
    ) -> dict[str, str]:
        """The NATS headers of a message published with ``headers`` and ``key`` (as the header
        ``Romeways-Key``); a RomewaysError, before anything is sent, for what NATS cannot carry."""
        carried: dict[str, str] = {}
        for name, value in headers or ():
            carried[name] = self._header_text(name, value)
        if key is not None:
            carried[KEY_HEADER] = self._header_text(KEY_HEADER, key, what="key")
        return carried

    def _header_text(self, name: str, value: bytes, what: str = "header") -> str:
        """A header value as NATS carries it: text without line breaks."""
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = "\r"  # refused below
        if "\r" in text or "\n" in text or not name or ":" in name or " " in name:
            label = "key" if what == "key" else f"header {name!r}"
            raise RomewaysError(
                f"{self._where} cannot publish the {label}: NATS headers are UTF-8 text "
                "without line breaks (and names without ':' or spaces); encode it, e.g. as hex"
            )
        return text

    def resend_headers(self, original: Msg) -> dict[str, str]:
        """The original's headers, and a message id made from its stream sequence (a retried or
        repeated resend of it is deduplicated by the server)."""
        carried = {k: v for k, v in (original.headers or {}).items() if k not in _NOT_CARRIED}
        sequence = stream_sequence(original.reply)
        carried[_MSG_ID] = f"romeways-resend:{self._config.stream}:{sequence}"
        return carried

    async def publish(self, message: bytes, headers: dict[str, str], what: str) -> PubAck:
        """Publish to the subject and await the PubAck; a PubAck that does not come is retried
        with the same message id (``Nats-Msg-Id``), which the server deduplicates."""
        _, js = await self._link.require()
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
                    await self._create_stream(js, exc)
                    continue
                raise ConnectorError(
                    f"{self._where} could not {what}: no stream takes subject "
                    f"{config.subject!r}; create stream {config.stream!r} or set create=True"
                ) from exc
            except nats.errors.TimeoutError as exc:
                if attempt == _PUBLISH_ATTEMPTS:
                    raise ConnectorError(
                        f"{self._where} could not {what}: no PubAck from JetStream after "
                        f"{attempt} tries ({describe_exception(exc)}); check that the server "
                        "is reachable"
                    ) from exc
                logger.warning(
                    "%s got no PubAck to %s (try %d of %d); publishing it again with the same "
                    "message id %r, which JetStream deduplicates",
                    self._where,
                    what,
                    attempt,
                    _PUBLISH_ATTEMPTS,
                    headers[_MSG_ID],
                )
                continue
            except nats.errors.Error as exc:
                raise ConnectorError(
                    f"{self._where} could not {what}: {describe_exception(exc)}"
                ) from exc
            if ack.duplicate:
                logger.info(
                    "%s: JetStream already had message id %r (stream sequence %d): deduplicated",
                    self._where,
                    headers[_MSG_ID],
                    ack.seq,
                )
            return ack
        raise AssertionError("unreachable")  # pragma: no cover

    def _publish_timeout(self) -> float:
        timeout = self._request_timeout
        left = stop_time_left()
        return timeout if left is None else max(0.5, min(timeout, left))

    async def _create_stream(self, js: JetStreamContext, cause: Exception) -> None:
        try:
            await ensure_stream(js, self._config, self._where)
        except nats.js.errors.APIError as exc:
            raise ConnectorError(
                f"{self._where} could not create stream {self._config.stream!r} to publish "
                f"to: {describe_exception(exc)}"
            ) from cause
