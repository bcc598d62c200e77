"""How a message is laid out in a stream entry, and what an entry tells about its message."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import msgspec
from redis.typing import EncodableT, FieldT

from ..._connector import MessageMetadata

logger = logging.getLogger("romeways")

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py returns it: its id and its fields."""

DATA: Final = b"data"  # the field holding the message
KEY: Final = b"key"  # the field holding the key it was published with, if any
HEADER: Final = b"h:"  # the prefix of the fields holding its headers


def new_fields(
    message: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> dict[FieldT, EncodableT]:
    """The fields of an entry for ``message`` published with ``key`` and ``headers``."""
    fields: dict[FieldT, EncodableT] = {DATA: message}
    if key is not None:
        fields[KEY] = key
    for name, value in headers:
        fields[HEADER + name.encode()] = value
    return fields


def resend_fields(original: dict[bytes, bytes], message: bytes) -> dict[FieldT, EncodableT]:
    """The fields of a resend of ``original``: the new message, its key and headers."""
    fields: dict[FieldT, EncodableT] = {
        name: value for name, value in original.items() if name == KEY or name.startswith(HEADER)
    }
    fields[DATA] = message
    return fields


def foreign_message(fields: dict[bytes, bytes]) -> bytes:
    """An entry not added by romeways (no ``data`` field): its fields as a JSON object."""
    text = {
        key.decode("utf-8", "backslashreplace"): value.decode("utf-8", "backslashreplace")
        for key, value in fields.items()
    }
    return msgspec.json.encode(text)


def metadata_of(entry: Entry, stream: str, delivery_count: int) -> MessageMetadata:
    """Key and headers the entry was added with, its time (from its id), its position
    (``stream``, ``id``) and how many times the group has delivered it."""
    entry_id, fields = entry
    headers = tuple(
        (name[len(HEADER) :].decode("utf-8", "backslashreplace"), value)
        for name, value in fields.items()
        if name.startswith(HEADER)
    )
    millis, _, _ = entry_id.partition(b"-")
    return MessageMetadata(
        key=fields.get(KEY),
        headers=headers,
        timestamp=int(millis) / 1000 if millis.isdigit() else None,
        position=(("stream", stream), ("id", entry_id.decode())),
        delivery_count=delivery_count,
    )
