"""Connector and queue configs: frozen keyword-only msgspec Structs that users subclass.

A plain ``class MyQueueConfig(romeways.MemoryQueueConfig)`` is frozen and keyword-only too:
statically through ``dataclass_transform`` on the two bases, at run time through their metaclass
(msgspec >= 0.20; older msgspec inherits ``frozen`` only, and the subclass's own fields also
take positional arguments there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec
from typing_extensions import dataclass_transform

from ._errors import ConfigError

if TYPE_CHECKING:
    _ConfigStruct = msgspec.Struct
elif hasattr(msgspec, "StructMeta"):  # msgspec >= 0.20 lets a metaclass derive from its own

    class _ConfigMeta(msgspec.StructMeta):
        """Makes every config class frozen and keyword-only unless it says otherwise, which
        it may not: a mutable config could change under a running worker."""

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

    class _ConfigStruct(msgspec.Struct, metaclass=_ConfigMeta):
        """The runtime base of both config classes (its metaclass is what matters)."""

else:
    _ConfigStruct = msgspec.Struct


def require(config: object, field: str, ok: bool, rule: str) -> None:
    """Raise a ConfigError naming the config class, the field and its value unless ``ok``."""
    if not ok:
        value = getattr(config, field)
        raise ConfigError(f"{type(config).__name__}.{field}={value!r} is invalid: {rule}")


# Subclasses are frozen and keyword-only for mypy and pyright without spelling it out (the
# checkers read the decorator only where it is written out).
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class GenericConnectorConfig(_ConfigStruct, frozen=True, kw_only=True):
    """What every connector config has: the name queues use to find their connector."""

    connector_name: str

    def __post_init__(self) -> None:
        require(self, "connector_name", bool(self.connector_name.strip()), "give a non-empty name")


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class GenericQueueConfig(_ConfigStruct, frozen=True, kw_only=True):
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
