"""Connector and queue configs: frozen keyword-only msgspec Structs that users subclass."""

from __future__ import annotations

import math

import msgspec

from ._errors import ConfigError


def require(config: object, field: str, ok: bool, rule: str) -> None:
    """Raise a ConfigError naming the config class, the field and its value unless ``ok``."""
    if not ok:
        value = getattr(config, field)
        raise ConfigError(f"{type(config).__name__}.{field}={value!r} is invalid: {rule}")


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
    longer into a failure; ``dead_letter_timeout`` (seconds) bounds the queue's dead-letter hook,
    whose message stays unacknowledged when the hook overruns.
    """

    connector_name: str
    frequency: float = 1.0
    max_chunk_size: int = 10
    sequential: bool = False
    retries: int = 3
    handler_timeout: float | None = None
    dead_letter_timeout: float = 30.0

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
        require(
            self,
            "dead_letter_timeout",
            math.isfinite(self.dead_letter_timeout) and self.dead_letter_timeout > 0,
            "give a finite number of seconds > 0",
        )
