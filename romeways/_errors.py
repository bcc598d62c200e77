"""The exception hierarchy: everything romeways raises derives from ``RomewaysError``."""

from __future__ import annotations

import math
from typing import cast


class RomewaysError(Exception):
    """Root of every error romeways raises on purpose."""


class ConfigError(RomewaysError, ValueError):
    """A config field holds a value that cannot work; the message names the field."""


class ConfigFieldError(ConfigError, TypeError):
    """A config was built with a required field missing or a field it does not have; also a
    TypeError, which msgspec raised for these before, so old ``except TypeError`` still works."""


class RegistrationError(RomewaysError, TypeError):
    """A handler or connector was registered in a way that cannot run; raised at registration."""


class ConnectorError(RomewaysError):
    """A connector failed talking to its backend; the original error is chained as ``__cause__``."""


class WorkerCrashedError(RomewaysError):
    """A worker process kept crashing, so ``start()`` gave up instead of restarting it forever."""


class ResendException(RomewaysError):
    """Raised by a handler to put its message back on the queue with the resend counter raised.

    ``delay`` (seconds) holds the resend back without blocking the worker's other messages;
    None (the default) takes it from the queue's ``retry_backoff`` (no delay without one).
    Once the queue's ``retries`` are spent, the message is dead-lettered instead.
    """

    def __init__(self, *args: object, delay: float | None = None) -> None:
        super().__init__(*args)
        given = cast(object, delay)  # untyped callers may pass anything
        if given is not None and (
            not isinstance(given, int | float)
            or isinstance(given, bool)
            or not math.isfinite(given)
            or given < 0
        ):
            raise ConfigError(
                f"ResendException(delay={delay!r}): give a finite number of seconds >= 0, or "
                "None for the queue's retry_backoff"
            )
        self.delay = delay
