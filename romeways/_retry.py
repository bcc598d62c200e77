"""Retry backoff: how long a resend waits when the handler named no delay.

A queue's ``retry_backoff`` gives resend ``n`` (the message's ``n``-th resend) a delay of
``first * factor ** (n - 1)`` seconds, at most ``maximum``, each shortened at random by up to
``jitter`` of itself so that messages that failed together do not come back together.
"""

from __future__ import annotations

import math
import random

import msgspec

from ._errors import ConfigError


class RetryBackoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff for resends: 1 s, 2 s, 4 s ... at most 60 s by default, with 20%
    jitter. The cap is low because a delayed resend is held by the worker (unacknowledged)
    until it is due: minutes-long holds belong in a dead-letter queue and a replay instead."""

    first: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        def require(name: str, ok: bool, rule: str) -> None:
            if not ok:
                value: object = getattr(self, name)
                raise ConfigError(f"RetryBackoff.{name}={value!r} is invalid: {rule}")

        for name in ("first", "factor", "maximum", "jitter"):
            value: object = getattr(self, name)
            require(
                name,
                isinstance(value, int | float) and not isinstance(value, bool),
                "give a number",
            )
        require("first", math.isfinite(self.first) and self.first >= 0, "give seconds >= 0")
        require("factor", math.isfinite(self.factor) and self.factor >= 1, "give a factor >= 1")
        require(
            "maximum",
            math.isfinite(self.maximum) and self.maximum >= self.first,
            f"give seconds >= first ({self.first})",
        )
        require("jitter", 0 <= self.jitter <= 1, "give a fraction from 0 to 1")

    def delay(self, resend: int) -> float:
        """Seconds before resend number ``resend`` (1 for a message's first resend)."""
        exponent = max(resend - 1, 0)
        try:
            base = min(self.first * self.factor**exponent, self.maximum)
        except OverflowError:  # a float power past 1e308: long past the cap
            base = self.maximum
        if self.jitter:
            base -= base * self.jitter * random.random()
        return base
