"""The app's shutdown deadline as a worker hands it to its connector's ``close()``: one deadline
for the whole stop (the in-flight handlers' drain and the close after it), so no step of a close
waits a fresh timeout of its own. A context variable rather than a ``close()`` argument, so the
Connector protocol stays as it is; a connector that does not read it is unaffected."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

STOP_DEADLINE: ContextVar[float | None] = ContextVar("romeways_stop_deadline", default=None)
"""``loop.time()`` by which the app's stop must be over; set by the worker in its own task
before it closes its connector, None outside a stop (e.g. a direct ``close()`` call)."""


def stop_time_left() -> float | None:
    """Seconds until the app's shutdown deadline (0 or less once it passed), None outside a
    stop."""
    deadline = STOP_DEADLINE.get()
    return None if deadline is None else deadline - asyncio.get_running_loop().time()
