"""A registered consumer (a route): handler, queue, config and codec, checked at registration."""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, cast

import msgspec

from ._batch import Batch
from ._config import GenericQueueConfig
from ._dead_letters import DeadLetterQueue
from ._errors import RegistrationError
from ._message import Codec, Message, PayloadT

logger = logging.getLogger("romeways")

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
"""A queue's dead-letter hook: awaited with each message dead-lettered there (a ``DeadLetter``)."""

DeadLetterTarget = DeadLetterHook | DeadLetterQueue
"""Where a queue's dead letters go: a hook called with each, or a dead-letter queue."""


class Route(Generic[PayloadT]):
    """Everything a worker needs to consume one queue."""

    __slots__ = (
        "batch",
        "codec",
        "config",
        "dead_letter",
        "handler",
        "handler_name",
        "queue_name",
    )

    def __init__(
        self,
        *,
        queue_name: str,
        config: GenericQueueConfig,
        handler: Handler[PayloadT],
        codec: Codec[PayloadT],
        dead_letter: DeadLetterTarget | None,
        batch: bool = False,
    ) -> None:
        self.queue_name = queue_name
        self.config = config
        self.handler = handler
        self.codec = codec
        self.dead_letter = dead_letter
        self.handler_name = describe(handler)
        # A batch route's handler takes a Batch of the chunk, not a Message (batch_consumer).
        self.batch = batch

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


def check_arguments(*, where: str, queue_name: object, config: object, dead_letter: object) -> str:
    """Check what ``queue_consumer`` is given before the handler (queue name, config and
    dead-letter hook), so a bad one fails at that call; ``where`` with the config named."""
    if not isinstance(queue_name, str) or not queue_name:  # untyped callers
        raise RegistrationError(f"{where}: queue_name must be a non-empty str")
    if not isinstance(config, GenericQueueConfig):
        raise RegistrationError(
            f"{where}: config is a {type(config).__name__}, but it must be a GenericQueueConfig "
            "(for example romeways.MemoryQueueConfig or romeways.KafkaQueueConfig)"
        )
    where = f"{where} with {type(config).__name__}(connector_name={config.connector_name!r})"
    if isinstance(dead_letter, DeadLetterQueue):
        target = cast(object, dead_letter.queue_name)  # untyped callers
        if not isinstance(target, str) or not target:
            raise RegistrationError(
                f"{where}: DeadLetterQueue.queue_name must be a non-empty str, got {target!r}"
            )
        given = cast(object, dead_letter.config)
        if given is not None and not isinstance(given, GenericQueueConfig):
            raise RegistrationError(
                f"{where}: DeadLetterQueue.config is a {type(given).__name__}, but it must be "
                "a GenericQueueConfig or None"
            )
    elif dead_letter is not None and not inspect.iscoroutinefunction(dead_letter):
        raise RegistrationError(
            f"{where}: dead_letter must be an 'async def' function, a "
            "romeways.DeadLetterQueue or None"
        )
    return where


def make_route(
    *,
    queue_name: str,
    config: object,
    handler: object,
    dead_letter: object,
    batch: bool = False,
) -> Route[Any]:
    """Check one registration and build its route; every error names handler, queue and config.
    ``batch``: registered by ``batch_consumer``, the handler takes a ``Batch``."""
    decorator = "batch_consumer" if batch else "queue_consumer"
    where = check_arguments(
        where=f"@{decorator}(queue_name={queue_name!r}) on {describe(handler)}",
        queue_name=queue_name,
        config=config,
        dead_letter=dead_letter,
    )
    config = cast(GenericQueueConfig, config)
    if not callable(handler) or not inspect.iscoroutinefunction(handler):
        raise RegistrationError(f"{where}: the handler must be an 'async def' function")
    if batch and config.max_concurrency is not None:
        raise RegistrationError(
            f"{where}: max_concurrency={config.max_concurrency} bounds single-message handlers; "
            "a batch handler handles one chunk at a time, sized by max_chunk_size: leave "
            "max_concurrency None"
        )
    payload_type = _payload_type(handler, where, batch=batch)
    try:
        codec: Codec[Any] = Codec(payload_type)
    except TypeError as exc:
        raise RegistrationError(
            f"{where}: msgspec cannot decode the payload type {payload_type!r} ({exc}); use a "
            "msgspec Struct, a dataclass, a TypedDict or builtin types"
        ) from exc
    _warn_if_it_returns(handler, where)
    return Route(
        queue_name=queue_name,
        config=config,
        handler=handler,
        codec=codec,
        dead_letter=cast("DeadLetterTarget | None", dead_letter),  # checked by check_arguments
        batch=batch,
    )


_RETURNS_NOTHING: tuple[object, ...] = (None, type(None), typing.NoReturn, typing.Never)
_MAY_RETURN_ANYTHING: tuple[object, ...] = (Any, object)


def _warn_if_it_returns(handler: Callable[..., object], where: str) -> None:
    """Warn, once at registration, about a handler that returns a value: romeways drops it.
    Read from the return annotation, or else from the source's ``return <value>`` statements,
    so the worker does no per-message work for it."""
    try:
        returns: object = typing.get_type_hints(handler).get("return", inspect.Signature.empty)
    except Exception:  # unresolvable annotations: the raw one
        returns = inspect.signature(handler).return_annotation
    if returns in ("None", "NoReturn", "Never") or any(returns is r for r in _RETURNS_NOTHING):
        return
    if any(returns is r for r in _MAY_RETURN_ANYTHING) or returns in ("Any", "object"):
        return
    if returns is not inspect.Signature.empty:
        shown = getattr(returns, "__name__", None) or str(returns)
        logger.warning(
            "%s is annotated to return %s, but romeways drops what a handler returns; "
            "publish it (romeways.publish) or return None",
            where,
            shown,
        )
        return
    line = _first_value_return(handler)
    if line is not None:
        logger.warning(
            "%s returns a value (line %d), but romeways drops what a handler returns; "
            "publish it (romeways.publish) or return None",
            where,
            line,
        )


def _first_value_return(handler: Callable[..., object]) -> int | None:
    """The line of the handler's first ``return <value>`` (not ``return None``), if its source
    can be read; nested functions and classes are not the handler's own returns."""
    try:
        lines, first = inspect.getsourcelines(handler)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):  # no source (REPL, exec), or not parsable alone
        return None
    function = next(iter(tree.body), None)
    if not isinstance(function, ast.AsyncFunctionDef):
        return None
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    pending: list[ast.AST] = list(function.body)
    found: list[int] = []
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                found.append(first + node.lineno - 1)
        if not isinstance(node, nested):
            pending.extend(ast.iter_child_nodes(node))
    return min(found, default=None)


def _payload_type(handler: Callable[..., object], where: str, *, batch: bool = False) -> Any:
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
            f"the {'batch' if batch else 'message'} (it requires: {names})"
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
    expected, other = (Batch, Message) if batch else (Message, Batch)
    if annotation is expected:
        return str
    if typing.get_origin(annotation) is expected:
        (payload_type,) = typing.get_args(annotation)
        return payload_type
    if annotation is other or typing.get_origin(annotation) is other:
        if batch:
            raise RegistrationError(
                f"{where}: parameter {param.name!r} is annotated {annotation!r}, a single "
                "message; @batch_consumer hands the handler a romeways.Batch[YourPayload] of "
                "the chunk: annotate it so, or register it with @queue_consumer"
            )
        raise RegistrationError(
            f"{where}: parameter {param.name!r} is annotated {annotation!r}, a batch; "
            "@queue_consumer hands the handler one romeways.Message[YourPayload]: register "
            "it with @batch_consumer, or annotate it romeways.Message"
        )
    wanted = (
        "romeways.Batch or romeways.Batch[YourPayload]"
        if batch
        else ("romeways.Message or romeways.Message[YourPayload]")
    )
    raise RegistrationError(
        f"{where}: parameter {param.name!r} is annotated {annotation!r}; annotate it {wanted}"
    )
