"""A registered consumer (a route): handler, queue, config and codec, checked at registration."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, cast

import msgspec

from ._config import GenericQueueConfig
from ._errors import RegistrationError
from ._message import Codec, Message, PayloadT

Handler = Callable[[Message[PayloadT]], Awaitable[object]]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message romeways gave up on, as handed to a queue's dead-letter hook."""

    connector_name: str
    queue_name: str
    handler: str
    reason: str
    resend_times: int
    data: bytes


DeadLetterHook = Callable[[DeadLetter], Awaitable[object]]


class Route(Generic[PayloadT]):
    """Everything a worker needs to consume one queue."""

    __slots__ = ("codec", "config", "dead_letter", "handler", "handler_name", "queue_name")

    def __init__(
        self,
        *,
        queue_name: str,
        config: GenericQueueConfig,
        handler: Handler[PayloadT],
        codec: Codec[PayloadT],
        dead_letter: DeadLetterHook | None,
    ) -> None:
        self.queue_name = queue_name
        self.config = config
        self.handler = handler
        self.codec = codec
        self.dead_letter = dead_letter
        self.handler_name = describe(handler)

    @property
    def connector_name(self) -> str:
        return self.config.connector_name

    def where(self) -> str:
        """Names the handler, queue and connector for error messages and logs."""
        return (
            f"handler {self.handler_name} of queue {self.queue_name!r} "
            f"(connector {self.connector_name!r})"
        )


def describe(func: object) -> str:
    """``module.qualname`` of a function, for messages."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{name}"


def make_route(
    *,
    queue_name: str,
    config: object,
    handler: object,
    dead_letter: object,
) -> Route[Any]:
    """Check one registration and build its route; every error names handler, queue and config."""
    where = f"@queue_consumer(queue_name={queue_name!r}) on {describe(handler)}"
    if not isinstance(cast(object, queue_name), str) or not queue_name:  # untyped callers
        raise RegistrationError(f"{where}: queue_name must be a non-empty str")
    if not isinstance(config, GenericQueueConfig):
        raise RegistrationError(
            f"{where}: config is a {type(config).__name__}, but it must be a GenericQueueConfig "
            "(for example romeways.MemoryQueueConfig or romeways.KafkaQueueConfig)"
        )
    where = f"{where} with {type(config).__name__}(connector_name={config.connector_name!r})"
    if not callable(handler) or not inspect.iscoroutinefunction(handler):
        raise RegistrationError(f"{where}: the handler must be an 'async def' function")
    if dead_letter is not None and not inspect.iscoroutinefunction(dead_letter):
        raise RegistrationError(f"{where}: dead_letter must be an 'async def' function or None")
    payload_type = _payload_type(handler, where)
    try:
        codec: Codec[Any] = Codec(payload_type)
    except TypeError as exc:
        raise RegistrationError(
            f"{where}: msgspec cannot decode the payload type {payload_type!r} ({exc}); use a "
            "msgspec Struct, a dataclass, a TypedDict or builtin types"
        ) from exc
    return Route(
        queue_name=queue_name,
        config=config,
        handler=handler,
        codec=codec,
        dead_letter=dead_letter,
    )


def _payload_type(handler: Callable[..., object], where: str) -> Any:
    signature = inspect.signature(handler)
    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    required_other = [p for p in params if p.kind in (p.KEYWORD_ONLY,) and p.default is p.empty]
    if len(positional) != 1 or required_other:
        names = ", ".join(p.name for p in positional + required_other) or "none"
        raise RegistrationError(
            f"{where}: the handler must take exactly one required positional parameter, "
            f"the message (it requires: {names})"
        )
    param = positional[0]
    if param.annotation is param.empty:
        return str
    try:
        annotation = typing.get_type_hints(handler).get(param.name, param.annotation)
    except Exception as exc:
        raise RegistrationError(
            f"{where}: cannot resolve the annotation of parameter {param.name!r}: {exc}"
        ) from exc
    if annotation is Message:
        return str
    if typing.get_origin(annotation) is Message:
        (payload_type,) = typing.get_args(annotation)
        return payload_type
    raise RegistrationError(
        f"{where}: parameter {param.name!r} is annotated {annotation!r}; annotate it "
        "romeways.Message or romeways.Message[YourPayload]"
    )
