"""Connector and queue configs: frozen keyword-only msgspec Structs that users subclass."""

from __future__ import annotations

import math
from typing import Final, cast

import msgspec

from ._errors import ConfigError


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


def require(config: object, field: str, ok: bool, rule: str) -> None:
    """Raise a ConfigError naming the config class, the field and its value unless ``ok``; a
    secret field's value is masked (and never held in a local, which error trackers record)."""
    if not ok:
        raise ConfigError(
            f"{type(config).__name__}.{field}={shown(config, field)!r} is invalid: {rule}"
        )


class GenericConnectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What every connector config has: the name queues use to find their connector."""

    connector_name: str

    def __post_init__(self) -> None:
        require(self, "connector_name", bool(self.connector_name.strip()), "give a non-empty name")


class GenericQueueConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one queue is consumed.

    ``frequency`` is the longest (seconds) a worker waits for new messages before asking again;
    ``max_chunk_size`` how many messages one fetch may return; ``sequential`` handles a chunk one
    message at a time instead of concurrently; ``retries`` how many resends a message may have
    before it is dead-lettered; ``handler_timeout`` (seconds, optional) turns a handler that runs
    longer into a failure.
    """

    connector_name: str
    frequency: float = 1.0
    max_chunk_size: int = 10
    sequential: bool = False
    retries: int = 3
    handler_timeout: float | None = None

    def __post_init__(self) -> None:
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
