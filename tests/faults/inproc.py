"""Running an App in the test's own event loop (connectors as asyncio tasks), bounded in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import romeways


async def wait_until(
    what: str, check: Callable[[], bool], timeout: float, app_task: asyncio.Task[None]
) -> None:
    """Poll ``check()`` until true; AssertionError after ``timeout`` seconds, or at once if the
    app's ``start()`` ended (its own exception is raised then)."""
    deadline = time.monotonic() + timeout
    while not check():
        if app_task.done():
            app_task.result()
            raise AssertionError(f"start() returned while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def stop(app: romeways.App, app_task: asyncio.Task[None], within: float) -> float:
    """``app.stop()`` and wait for ``start()`` to return; its duration in seconds, and an
    AssertionError if that takes longer than ``within``."""
    begun = time.monotonic()
    app.stop()
    done, _ = await asyncio.wait([app_task], timeout=within)
    took = time.monotonic() - begun
    if not done:
        app_task.cancel()
        raise AssertionError(f"start() did not return within {within}s of stop()")
    app_task.result()
    return took


def start(app: romeways.App) -> asyncio.Task[None]:
    """``app.start()`` as a task of the running loop."""
    return asyncio.create_task(app.start())
