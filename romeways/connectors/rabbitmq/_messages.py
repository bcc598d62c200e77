"""What a delivered message tells (its tag, whether and how often it was delivered before, its
key and headers as metadata), and the properties publishes and resends carry."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiormq.abc
from aiormq import spec

from ..._connector import MessageMetadata
from ..._errors import ConnectorError

HEADER_KEY: Final = "x-romeways-routing-key"  # a resend's original routing key
_COUNT_HEADERS: Final = ("x-delivery-count", "x-acquired-count")


def tag_of(message: aiormq.abc.DeliveredMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only a returned message or an empty get has none
        raise ConnectorError("RabbitMQ delivered a message without a delivery tag")
    return tag


def redelivered(message: aiormq.abc.DeliveredMessage) -> bool:
    delivery = message.delivery
    return isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk) and bool(
        delivery.redelivered
    )


def delivery_count(message: aiormq.abc.DeliveredMessage) -> int | None:
    """How many times RabbitMQ has delivered the message, this time included: 1 for a first
    delivery, the quorum queue's ``x-delivery-count`` (or ``x-acquired-count``, RabbitMQ 4.3+)
    plus one for a redelivery; None for a redelivery from a classic queue (no count)."""
    if not redelivered(message):
        return 1
    headers = message.header.properties.headers or {}
    counts = [
        value
        for value in (headers.get(name) for name in _COUNT_HEADERS)
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(counts) + 1 if counts else None


def metadata(message: aiormq.abc.DeliveredMessage, tag: int, queue: str) -> MessageMetadata:
    """Key (the routing key it was published with through an exchange, kept across resends),
    headers, timestamp, position (queue, delivery tag) and delivery count."""
    properties = message.header.properties
    raw_headers: Mapping[str, Any] = properties.headers or {}
    key: bytes | None = None
    original = raw_headers.get(HEADER_KEY)
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
            if name != HEADER_KEY and name not in _COUNT_HEADERS
        ),
        timestamp=stamp.timestamp() if isinstance(stamp, datetime.datetime) else None,
        position=(("queue", queue), ("delivery_tag", tag)),
        delivery_count=delivery_count(message),
    )


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def publish_properties(headers: Sequence[tuple[str, bytes]] | None) -> spec.Basic.Properties:
    """A new message's properties: persistent, a message id, the time, byte-array headers."""
    return spec.Basic.Properties(
        delivery_mode=2,
        message_id=uuid.uuid4().hex,
        timestamp=datetime.datetime.now(datetime.UTC),
        headers={name: bytearray(value) for name, value in headers} if headers else None,
    )


def resend_properties(message: aiormq.abc.DeliveredMessage) -> spec.Basic.Properties:
    """The original's properties for its resend: persistent, headers kept (without the
    broker's counts), its routing key kept in a header when it was published with one."""
    original = message.header.properties
    headers: dict[str, Any] = {
        name: value
        for name, value in (original.headers or {}).items()
        if name not in _COUNT_HEADERS
    }
    if message.exchange and HEADER_KEY not in headers:
        headers[HEADER_KEY] = message.routing_key or ""
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
