"""Connector and queue configs: frozen keyword-only msgspec Structs that users subclass.

A plain ``class MyQueueConfig(romeways.MemoryQueueConfig)`` is frozen and keyword-only too:
statically through ``dataclass_transform`` on the two bases, at run time through their metaclass.
"""

from __future__ import annotations

import math
import re
import sys
import types
import typing
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, cast

import msgspec
from typing_extensions import dataclass_transform

from ._errors import ConfigError, ConfigFieldError
from ._retry import RetryBackoff


class _Masked:
    """Shown in place of a secret field's value (reprs, errors)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


MASKED: Final = _Masked()


def secret_fields(config: object) -> tuple[str, ...]:
    """The fields whose values never appear in reprs, logs or errors: those that the config's
    class, or any class it derives from, lists in its ``secret_fields`` class variable (so a
    subclass cannot un-declare a secret of its base)."""
    names: dict[str, None] = {}
    for klass in type(config).__mro__:
        declared: object = klass.__dict__.get("secret_fields", ())
        if isinstance(declared, tuple):
            items = cast("tuple[object, ...]", declared)
            names.update(dict.fromkeys(n for n in items if isinstance(n, str)))
    return tuple(names)


def shown(config: object, field: str) -> object:
    """The field's value as reprs and errors show it: MASKED for a secret field that is set."""
    if field in secret_fields(config) and getattr(config, field) is not None:
        return MASKED
    return getattr(config, field)


def masked_fields(config: msgspec.Struct) -> list[tuple[str, object]]:
    """The config's fields and values as reprs show them (its secret fields masked)."""
    return [(name, shown(config, name)) for name in config.__struct_fields__]


def masked_repr(config: msgspec.Struct) -> str:
    """``ClassName(field=value, ...)`` with the secret fields masked."""
    fields = ", ".join(f"{name}={value!r}" for name, value in masked_fields(config))
    return f"{type(config).__name__}({fields})"


def require(config: object, field: str, ok: bool, rule: str) -> None:
    """Raise a ConfigError naming the config class, the field and its value unless ``ok``; a
    secret field's value is masked (and never held in a local, which error trackers record)."""
    if not ok:
        raise ConfigError(
            f"{type(config).__name__}.{field}={shown(config, field)!r} is invalid: {rule}"
        )


# msgspec's own TypeErrors for arguments that do not fit the fields, raised before __post_init__.
_ARGUMENT_ERROR = re.compile(
    r"(?:Missing required argument|Unexpected keyword argument) '(?P<field>[^']+)'"
    r"|Extra positional arguments provided"
)


class _ConfigMeta(msgspec.StructMeta):
    """Every config class is frozen and keyword-only (a mutable config could change under a
    running worker), and msgspec's "Missing required argument 'x'" (which names no class)
    becomes a ConfigFieldError naming the config class and the field. Run time only: type
    checkers see plain Structs, made frozen and keyword-only by ``dataclass_transform``."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any
    ) -> Any:
        for option in ("frozen", "kw_only"):
            if options.setdefault(option, True) is not True:
                raise ConfigError(
                    f"class {name}({option}={options[option]!r}): romeways configs are "
                    f"frozen and keyword-only; leave out {option}= (or give True)"
                )
        return super().__new__(mcls, name, bases, namespace, **options)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            # This frame stays in the traceback: keep the arguments (secrets among them) out
            # of its locals, which error trackers record.
            del args, kwargs
            if not isinstance(exc, TypeError):
                raise
            tb = exc.__traceback__
            match = _ARGUMENT_ERROR.fullmatch(str(exc))
            # Raised by msgspec itself (no frame below this one), not by a __post_init__.
            if match is None or tb is None or tb.tb_next is not None:
                raise
            raise ConfigFieldError(_argument_error(cls, match)) from None


if TYPE_CHECKING:
    _ConfigStruct = msgspec.Struct
else:

    class _ConfigStruct(msgspec.Struct, metaclass=_ConfigMeta):
        """The runtime base of both config classes (its metaclass is what matters)."""


def _argument_error(cls: type[Any], match: re.Match[str]) -> str:
    field = match.group("field")
    fields = ", ".join(cls.__struct_fields__)
    if field is None:
        return f"{cls.__name__}: give its fields as keyword arguments ({fields})"
    if str(match.group(0)).startswith("Missing"):
        return f"{cls.__name__}: missing required field {field!r}"
    return f"{cls.__name__}: unknown field {field!r}; its fields are {fields}"


# Subclasses are frozen and keyword-only for mypy and pyright without spelling it out (the
# checkers read the decorator only where it is written out).
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class GenericConnectorConfig(_ConfigStruct, frozen=True, kw_only=True):
    """What every connector config has: the name queues use to find their connector.

    A subclass lists its secret fields (passwords, tokens) in ``secret_fields``; they are
    masked in ``repr()`` and validation errors, and its bases' stay masked too.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ()

    connector_name: str

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self, "connector_name", bool(self.connector_name.strip()), "give a non-empty name")

    def __repr__(self) -> str:
        """The fields, with those named in ``secret_fields`` masked."""
        return masked_repr(self)

    def __rich_repr__(self) -> list[tuple[str, object]]:
        """What rich's pretty printer shows: the fields, secrets masked."""
        return masked_fields(self)


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class GenericQueueConfig(_ConfigStruct, frozen=True, kw_only=True):
    """How one queue is consumed.

    ``frequency`` is the longest (seconds) a worker waits for new messages before asking again;
    ``max_chunk_size`` how many messages one fetch may return; ``sequential`` handles a chunk one
    message at a time instead of concurrently; ``retries`` how many resends a message may have
    before it is dead-lettered; ``handler_timeout`` (seconds, optional) turns a handler that runs
    longer into a failure; ``dead_letter_timeout`` (seconds) bounds the queue's dead-letter hook,
    whose message stays unacknowledged when the hook overruns. ``retry_backoff`` (a
    ``RetryBackoff``, optional) spaces out resends that name no delay; ``retry_on`` lists
    exception types that are resent with it (within ``retries``) instead of dead-lettered at
    once. ``max_concurrency`` (optional) bounds the handlers in flight independently of chunks:
    the worker fetches again as soon as one finishes, so a slow message holds up only its own
    slot (None: a chunk at a time). Fields listed in ``secret_fields`` (and in the bases') are
    masked in ``repr()`` and validation errors.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ()

    connector_name: str
    frequency: float = 1.0
    max_chunk_size: int = 10
    sequential: bool = False
    retries: int = 3
    handler_timeout: float | None = None
    dead_letter_timeout: float = 30.0
    retry_backoff: RetryBackoff | None = None
    retry_on: tuple[type[Exception], ...] = ()
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self, "connector_name", bool(self.connector_name.strip()), "give a non-empty name")
        require(
            self,
            "frequency",
            math.isfinite(self.frequency) and self.frequency >= 0,
            "give a finite number of seconds >= 0",
        )
        require(self, "max_chunk_size", self.max_chunk_size >= 1, "give a count >= 1")
        require(self, "retries", self.retries >= 0, "give a count >= 0")
        timeout = self.handler_timeout
        require(
            self,
            "handler_timeout",
            timeout is None or (math.isfinite(timeout) and timeout > 0),
            "give a positive number of seconds, or None for no limit",
        )
        require(
            self,
            "dead_letter_timeout",
            math.isfinite(self.dead_letter_timeout) and self.dead_letter_timeout > 0,
            "give a finite number of seconds > 0",
        )
        concurrency = self.max_concurrency
        require(
            self,
            "max_concurrency",
            concurrency is None or concurrency >= 1,
            "give a count >= 1, or None to handle a chunk at a time",
        )
        require(
            self,
            "max_concurrency",
            not self.sequential or concurrency is None or concurrency == 1,
            "sequential=True handles one message at a time; give max_concurrency=1 or None, "
            "or sequential=False",
        )
        require(
            self,
            "retry_on",
            all(
                isinstance(t, type) and issubclass(t, Exception)
                for t in cast("tuple[object, ...]", self.retry_on)  # untyped callers
            ),
            "give a tuple of Exception subclasses, such as (TimeoutError, ConnectionError)",
        )

    def __repr__(self) -> str:
        """The fields, with those named in ``secret_fields`` masked."""
        return masked_repr(self)

    def __rich_repr__(self) -> list[tuple[str, object]]:
        """What rich's pretty printer shows: the fields, secrets masked."""
        return masked_fields(self)

    def consumes_from(self) -> object | None:
        """The backend object this queue's consumer takes messages from, when configs of other
        queues could hand it the same one (a memory queue's ``multiprocessing.Queue``): two
        consumers of one object would silently split its messages, so registering a second is
        refused. None (the default) when queues cannot share their source that way."""
        return None


# -- field types ---------------------------------------------------------------------------------
# msgspec checks types when it decodes, not in __init__: GenericQueueConfig(max_chunk_size=2.5)
# would be built. Each config class gets its checks made once, from its resolved annotations.

_Check = Callable[[object], bool]
_FIELD_CHECKS: weakref.WeakKeyDictionary[type[Any], tuple[tuple[str, _Check, str], ...]] = (
    weakref.WeakKeyDictionary()
)


def check_field_types(config: msgspec.Struct) -> None:
    """Raise a ConfigError (via ``require``, which masks secrets) naming the class, field, value
    and expected type for the first field whose value does not fit its annotation."""
    cls = type(config)
    checks = _FIELD_CHECKS.get(cls)
    if checks is None:
        checks = _FIELD_CHECKS[cls] = _field_checks(cls)
    for name, check, expected in checks:
        value: object = getattr(config, name)
        if not check(value):
            require(config, name, False, f"give {expected}")


def _field_checks(cls: type[Any]) -> tuple[tuple[str, _Check, str], ...]:
    checks: list[tuple[str, _Check, str]] = []
    hints = _field_hints(cls)
    for name in cls.__struct_fields__:
        hint = hints.get(name, Any)
        check = _check_for(hint)
        if check is not None:
            checks.append((name, check, _describe(hint)))
    return tuple(checks)


def _field_hints(cls: type[Any]) -> dict[str, object]:
    """The resolved annotation of each field, one by one: a field whose annotation does not
    resolve here (``Queue[Any]`` on Python 3.11, a name imported only for type checking) is
    left unchecked instead of every field of the class."""
    hints: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        globalns = dict(vars(module)) if module is not None else {}
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            holder = types.SimpleNamespace(__annotations__={name: annotation})
            try:
                hints[name] = typing.get_type_hints(holder, globalns, dict(vars(klass)))[name]
            except Exception:  # unresolvable here: anything goes for this field
                hints[name] = Any
    return hints


def _anything(value: object) -> bool:
    return True


def _is_float(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_for(hint: object) -> _Check | None:
    """A check that a value fits ``hint`` (msgspec's rules: an int is a float, a bool is not an
    int), or None when anything goes: Any, type variables, protocols, forms not handled here."""
    if hint is Any:  # a class since Python 3.11, which isinstance() refuses
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _check_for(args[0])
    if hint is None or hint is type(None):
        return lambda value: value is None
    if origin is Literal:
        return lambda value: any(type(value) is type(a) and value == a for a in args)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_check_for(arg) for arg in args]
        if any(part is None for part in parts):
            return None
        checks = [part for part in parts if part is not None]
        return lambda value: any(check(value) for check in checks)
    if hint is float:
        return _is_float
    if hint is int:
        return _is_int
    if origin in (list, set, frozenset) and len(args) == 1:
        item: _Check = _check_for(args[0]) or _anything
        container = cast(type[Any], origin)
        return lambda value: (
            isinstance(value, container) and all(item(v) for v in cast("list[object]", value))
        )
    found: object = origin if origin is not None else hint
    if not isinstance(found, type):
        return None
    klass = cast(type[Any], found)
    if klass is object or getattr(klass, "_is_protocol", False) or typing.is_typeddict(klass):
        return None
    return lambda value: isinstance(value, klass)


def _describe(hint: object) -> str:
    """``hint`` as the error says what to give: "a float", "a str or None", "one of 'a', 'b'"."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _describe(args[0])
    if hint is None or hint is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in args)
    if origin in (list, set, frozenset):
        return _a(f"{_name_of(origin)}[{', '.join(map(_name_of, args))}]")
    return _a(_name_of(origin if origin is not None else hint))


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _name_of(hint: object) -> str:
    if isinstance(hint, type):
        if hint.__module__ == "builtins":
            return hint.__qualname__
        return f"{hint.__module__}.{hint.__qualname__}"
    return repr(hint)
