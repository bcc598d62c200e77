"""The message a handler receives, and the codec that turns queue bytes into it and back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, cast

import msgspec
import msgspec.inspect
from typing_extensions import TypeVar

PayloadT = TypeVar("PayloadT", default=str)

_ENVELOPE_MARK = b'"rw_resend_times"'


class Message(msgspec.Struct, Generic[PayloadT], frozen=True, kw_only=True):
    """One message: its payload and how many times it has been resent.

    A bare ``Message`` means ``Message[str]``: the payload is the message's text. ``Message[Order]``
    gets the payload decoded and validated from JSON into ``Order``.
    """

    payload: PayloadT
    rw_resend_times: int = 0

    @property
    def attempt(self) -> int:
        """1 for a first delivery, one more per resend (``rw_resend_times + 1``)."""
        return self.rw_resend_times + 1

    @classmethod
    def from_message(cls, message: bytes) -> Message[str]:
        """Read bytes as romeways 0.2 did: a resend envelope, or else text that is the payload."""
        return _TEXT_CODEC.decode(message)

    def to_json(self) -> bytes:
        """The wire envelope ``{"payload": ..., "rw_resend_times": n}`` (romeways 0.2 format)."""
        return msgspec.json.encode(self)

    def raise_resend_counter(self) -> Self:
        """A copy of this message with ``rw_resend_times`` raised by one."""
        return msgspec.structs.replace(self, rw_resend_times=self.rw_resend_times + 1)


class _Envelope(msgspec.Struct, Generic[PayloadT]):
    payload: PayloadT
    rw_resend_times: int = 0


class Codec(Generic[PayloadT]):
    """Decodes queue bytes into ``Message[payload_type]`` and encodes resends, built once per queue.

    Wire format (compatible with romeways 0.2 both ways): a resent message is the JSON envelope
    ``{"payload": ..., "rw_resend_times": n}`` (the counter last, as both write it); any other
    bytes are a fresh message whose payload is their text (``str``), the bytes themselves
    (``bytes``), or their JSON (any other type).
    """

    __slots__ = ("_envelope", "_fresh", "_fresh_payload", "_raw", "payload_type")

    def __init__(self, payload_type: type[PayloadT] | Any) -> None:
        self.payload_type: Any = payload_type
        self._raw = payload_type is str or payload_type is bytes
        envelope_payload: Any = msgspec.Raw if payload_type is str else payload_type
        # Both constructors raise TypeError for types msgspec cannot decode, but accept plain
        # classes (msgspec "custom types", which need a dec_hook), so those are refused here.
        custom = _custom_types(msgspec.inspect.type_info(payload_type), set())
        if custom:
            raise TypeError(f"{custom[0].__qualname__} is not a type msgspec can decode from JSON")
        # Subscripted at run time: a variable is no type expression to a TypeForm-aware checker.
        envelope_type: Any = cast(Any, _Envelope)[envelope_payload]
        self._envelope: msgspec.json.Decoder[_Envelope[Any]] = msgspec.json.Decoder(envelope_type)
        self._fresh: msgspec.json.Decoder[Any] | None = (
            None if self._raw else msgspec.json.Decoder(payload_type)
        )
        # The payload of a fresh message from its bytes: all C calls, no Python frame.
        self._fresh_payload: Callable[[bytes], Any] = (
            bytes.decode
            if payload_type is str
            else bytes
            if payload_type is bytes
            else cast("msgspec.json.Decoder[Any]", self._fresh).decode
        )

    def decode(self, data: bytes) -> Message[PayloadT]:
        """Decode one message; raises msgspec.ValidationError, DecodeError or UnicodeError."""
        # The counter is the envelope's last field, in what romeways writes (msgspec) and what
        # 0.2 wrote (json.dumps): an envelope's last quote closes "rw_resend_times". Looking
        # only there (rfind of one byte is a memrchr) rather than searching the whole message
        # for the mark takes a third of the decode time off every fresh message.
        end = data.rfind(b'"') + 1
        if data.endswith(_ENVELOPE_MARK, 0, end) and data[:1] == b"{":
            try:
                env = self._envelope.decode(data)
            except msgspec.DecodeError:
                if not self._raw:
                    raise
            else:
                payload: Any = env.payload
                if self.payload_type is str:
                    raw = bytes(cast(msgspec.Raw, payload))
                    # 0.2 put JSON objects in the payload as JSON text; strings come unquoted.
                    payload = msgspec.json.decode(raw) if raw[:1] == b'"' else raw.decode()
                return Message(payload=payload, rw_resend_times=env.rw_resend_times)
        if self._fresh is not None:
            return Message(payload=self._fresh.decode(data))
        if self.payload_type is str:
            return Message(payload=cast(PayloadT, data.decode()))
        return Message(payload=cast(PayloadT, data))

    def fresh_decoder(self, chunk: Sequence[bytes]) -> Callable[[bytes], PayloadT] | None:
        """For a chunk in which no message can be a resend envelope, the payload decoder of a
        fresh message (``Message(payload=d(data))`` is then ``decode(data)``); else None.

        One search of the whole chunk rather than an envelope check per message: most chunks
        hold no resent message at all, and then each message costs only msgspec's decode."""
        if _ENVELOPE_MARK in b"".join(chunk):
            return None
        return self._fresh_payload

    def encode_resend(self, message: Message[PayloadT]) -> bytes:
        """The envelope for ``message`` with its counter raised by one."""
        return msgspec.json.encode(message.raise_resend_counter())

    def encode_payload(self, payload: PayloadT) -> bytes:
        """The bytes of a fresh message carrying ``payload`` (text as is, anything else as JSON)."""
        if isinstance(payload, str) and self.payload_type is str:
            return payload.encode()
        if isinstance(payload, bytes) and self.payload_type is bytes:
            return payload
        return msgspec.json.encode(payload)


def _custom_types(node: object, seen: set[int]) -> list[type]:
    """The classes in a msgspec.inspect type tree that msgspec only decodes with a dec_hook."""
    if isinstance(node, msgspec.inspect.CustomType):
        return [node.cls]
    if isinstance(node, tuple):
        items = cast("tuple[object, ...]", node)
        return [c for item in items for c in _custom_types(item, seen)]
    if not isinstance(node, msgspec.Struct) or id(node) in seen:
        return []
    seen.add(id(node))  # recursive types refer back to the same node
    return _custom_types(msgspec.structs.astuple(node), seen)


_TEXT_CODEC: Codec[str] = Codec(str)
