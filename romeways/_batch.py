"""Batch handlers: ``async def handle(batch: Batch[T])`` gets a fetched chunk at once.

A ``Batch`` is the chunk's decoded messages, immutable, with ``resend`` and ``dead_letter`` to
mark single messages; the worker (``Worker._handle_batch``) applies the marks after the handler
returns and finishes (acks) the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, overload

from typing_extensions import TypeVar

from ._errors import RomewaysError
from ._message import Message, PayloadT

if TYPE_CHECKING:
    from ._context import MessageContext


class Resend:
    """A batch handler's mark: resend this message (``delay`` None: the queue's retry backoff)."""

    __slots__ = ("delay",)

    def __init__(self, delay: float | None) -> None:
        self.delay = delay


class DeadLetterMark:
    """A batch handler's mark: dead-letter this message, with ``reason``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Mark = Resend | DeadLetterMark


class Batch(Sequence[Message[PayloadT]]):
    """The decoded messages of one fetched chunk (up to ``max_chunk_size``), in queue order.

    Immutable. ``resend(message)`` and ``dead_letter(message, reason)`` mark single messages of
    it: they get that outcome once the handler returns (the last mark of a message counts); the
    others are finished and acknowledged. ``context(message)`` is one message's own context
    (its key, headers, position), where ``romeways.context()`` is the batch's first message's.
    """

    __slots__ = ("_context_of", "_contexts", "_index", "_marks", "_messages", "_open", "_where")

    def __init__(
        self,
        messages: Sequence[Message[PayloadT]],
        *,
        contexts: Callable[[int], MessageContext] | None = None,
        where: str = "a batch handler",
    ) -> None:
        self._messages: tuple[Message[PayloadT], ...] = tuple(messages)
        self._index: dict[int, int] | None = None  # id(message) -> position, on first mark
        self._context_of = contexts  # makes the context of the message at an index
        self._contexts: dict[int, MessageContext] = {}
        self._marks: dict[int, Mark] = {}
        self._open = True
        self._where = where

    @overload
    def __getitem__(self, index: int) -> Message[PayloadT]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Message[PayloadT]]: ...

    def __getitem__(self, index: int | slice) -> Message[PayloadT] | Sequence[Message[PayloadT]]:
        return self._messages[index]

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message[PayloadT]]:
        return iter(self._messages)

    def __repr__(self) -> str:
        return f"Batch(<{len(self._messages)} message(s)>, marked={len(self._marks)})"

    @property
    def payloads(self) -> list[PayloadT]:
        """The messages' payloads, in order (what a bulk insert usually wants)."""
        return [message.payload for message in self._messages]

    def resend(self, message: Message[PayloadT], *, delay: float | None = None) -> None:
        """Resend ``message`` (counted against the queue's ``retries``, as a ResendException
        would be) after the handler returns; ``delay`` seconds, None: the queue's backoff."""
        if delay is not None and not delay >= 0:
            raise RomewaysError(f"{self._where}: Batch.resend(delay={delay!r}): give seconds >= 0")
        self._marks[self._position(message, "resend")] = Resend(delay)

    def dead_letter(self, message: Message[PayloadT], reason: str) -> None:
        """Dead-letter ``message`` with ``reason`` after the handler returns (its queue's
        dead-letter hook gets it), without resending it."""
        self._marks[self._position(message, "dead_letter")] = DeadLetterMark(str(reason))

    def context(self, message: Message[PayloadT]) -> MessageContext:
        """The context of one message of the batch: its delivery, key, headers, position."""
        return self.context_at(self._position(message, "context", marking=False))

    def context_at(self, index: int) -> MessageContext:
        """The context of the message at ``index``: one object per message, made when first
        asked for (a message's metadata is looked up while the batch is handled)."""
        ctx = self._contexts.get(index)
        if ctx is None:
            if self._context_of is None:
                raise RomewaysError(f"{self._where}: this batch carries no message contexts")
            ctx = self._contexts[index] = self._context_of(index)
        return ctx

    @property
    def marked(self) -> bool:
        """Whether any message of the batch is marked (for the worker)."""
        return bool(self._marks)

    def mark_of(self, index: int) -> Mark | None:
        """The mark of the message at ``index`` (for the worker), None when unmarked."""
        return self._marks.get(index)

    def close(self) -> None:
        """The handler returned: marks made from now on are refused."""
        self._open = False

    def _position(self, message: Message[PayloadT], call: str, *, marking: bool = True) -> int:
        positions = self._index
        if positions is None:
            positions = self._index = {id(m): i for i, m in enumerate(self._messages)}
        index = positions.get(id(message))
        if index is None or self._messages[index] is not message:
            raise RomewaysError(
                f"{self._where}: Batch.{call}() was given a message that is not one of this "
                "batch's (pass the Message object itself, as iterated from the batch)"
            )
        if marking and not self._open:
            raise RomewaysError(
                f"{self._where}: Batch.{call}() after the handler returned; mark messages "
                "before returning"
            )
        return index


class AsyncBatchHandler(Protocol):
    """What ``batch_consumer`` registers: an ``async def handler(batch: Batch[T])`` with one
    required positional parameter, the batch (more parameters must have defaults)."""

    def __call__(self, batch: Batch[Any], /) -> Awaitable[object]: ...


# As AsyncHandlerT: the default keeps a misuse to one error in pyright.
AsyncBatchHandlerT = TypeVar(
    "AsyncBatchHandlerT", bound=AsyncBatchHandler, default=AsyncBatchHandler
)


class BatchConsumerDecorator(Protocol):
    """What ``batch_consumer(...)`` returns: registers an ``AsyncBatchHandler`` and gives it
    back with its type unchanged."""

    def __call__(self, handler: AsyncBatchHandlerT, /) -> AsyncBatchHandlerT: ...
