"""Running an app: workers as asyncio tasks, or in child processes the parent supervises."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ._errors import WorkerCrashedError
from ._telemetry import open_reporting
from ._worker import build_workers

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, SpawnContext
    from multiprocessing.process import BaseProcess

    from ._app import App

logger = logging.getLogger("romeways")

# A child that fails before consuming (a lifespan hook or connector start-up error) exits with
# this code; the supervisor then fails start() at once instead of restarting it.
EXIT_STARTUP_FAILED = 78
# A child whose handler raised KeyboardInterrupt, SystemExit or CancelledError exits with this
# code (never 0, whatever SystemExit carried); the supervisor restarts it like any crash.
EXIT_ABORTED = 70


def process_context() -> ForkContext | SpawnContext:
    """fork on platforms that have it: the child inherits the registrations of a script with no
    ``if __name__ == "__main__"`` guard. Elsewhere spawn, which needs an importable module."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


async def serve(app: App, connector_names: Iterable[str], stopping: asyncio.Event) -> None:
    """Run the workers of these connectors in this loop until ``stopping`` is set, then let
    in-flight handlers finish within ``app.shutdown_timeout`` and cancel the rest.

    A worker that fails (its connector could not start) stops the others and is raised."""
    names = set(connector_names)
    await app.run_startup_hooks()
    workers = build_workers(app, names, stopping)
    reporting = open_reporting(app, workers)
    tasks = [asyncio.create_task(w.run(), name=f"romeways:{w.route.queue_name}") for w in workers]
    stop_waiter = asyncio.create_task(stopping.wait())
    unasked = False
    try:
        await asyncio.wait([*tasks, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        unasked = not stopping.is_set()
    finally:
        stopping.set()
        stop_waiter.cancel()
        await _drain(tasks, app.shutdown_timeout)
        await app.run_shutdown_hooks()
        await app.close_publishers()
        await reporting.close()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # checked not None just above
    if unasked and any(task.cancelled() for task in tasks):
        # Nobody asked to stop: a handler raised CancelledError. Never swallow it.
        raise asyncio.CancelledError("a handler raised CancelledError; its worker stopped")


async def _drain(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for tasks to end by themselves for ``timeout`` seconds, then cancel what is left.
    Shielded so that a second cancellation of the caller cannot cut the drain short."""
    if not tasks:
        return

    async def drain() -> None:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            logger.warning(
                "shutdown timeout (%.1fs) reached: cancelling %s", timeout, task.get_name()
            )
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    await asyncio.shield(drain())


def _child_main(app: App, connector_name: str, parent_pid: int) -> None:
    """Entry point of a worker process: its own event loop and signal handlers."""
    # Stop signals arrive blocked (see _stop_signals_blocked): swap the parent's handlers and
    # its loop's wake-up pipe for ours first, so an early SIGTERM is kept, not lost or misrouted.
    signal.set_wakeup_fd(-1)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _note_early_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent_pid)
    app.in_worker_process = True
    try:
        asyncio.run(_child_serve(app, connector_name))
    except StartupFailed:
        sys.exit(EXIT_STARTUP_FAILED)
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError) as exc:
        logger.error(
            "worker process for connector %r stopped: a handler raised %s; its message is not "
            "acknowledged",
            connector_name,
            type(exc).__name__,
            exc_info=exc,
        )
        sys.exit(EXIT_ABORTED)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_early_stops: list[int] = []


def _note_early_stop(signum: int, frame: object) -> None:
    _early_stops.append(signum)


@contextlib.contextmanager
def _stop_signals_blocked() -> Generator[None, None, None]:
    """Hold SIGTERM/SIGINT back in this thread while a worker process is forked; the child
    unblocks them once its own handlers are in place."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StartupFailed(Exception):
    """Internal: a child could not start consuming; already logged."""


async def _child_serve(app: App, connector_name: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    if _early_stops:
        stopping.set()
    try:
        await serve(app, [connector_name], stopping)
    except Exception as exc:
        logger.error(
            "worker process for connector %r could not run: %s: %s",
            connector_name,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        raise StartupFailed from exc


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies, so no orphan outlives a killed
    parent; elsewhere the worker's parent check is the only guard."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


class Supervisor:
    """Keeps one connector's worker process running: restarts it with backoff when it dies,
    and gives up with WorkerCrashedError when it crashes too often."""

    def __init__(self, app: App, connector_name: str) -> None:
        self._app = app
        self._name = connector_name
        self._crashes: deque[float] = deque()
        self.process: BaseProcess | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        app = self._app
        while True:
            proc = process_context().Process(
                target=_child_main,
                args=(app, self._name, os.getpid()),
                name=f"romeways-{self._name}",
                daemon=True,
            )
            with _stop_signals_blocked():
                proc.start()
            self.process = proc
            logger.info("started worker process %d for connector %r", proc.pid, self._name)
            if await self._wait_exit_or_stop(proc, stopping):
                await self._stop_process(proc)
                return
            # The sentinel closes a moment before the child is reapable: join, then read the code.
            await asyncio.to_thread(proc.join)
            code, pid = proc.exitcode, proc.pid
            proc.close()
            if code == EXIT_STARTUP_FAILED:
                raise WorkerCrashedError(
                    f"the worker process of connector {self._name!r} failed at start-up "
                    f"(exit code {code}); its log above says why"
                )
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > app.restart_window:
                self._crashes.popleft()
            if len(self._crashes) > app.max_restarts:
                raise WorkerCrashedError(
                    f"the worker process of connector {self._name!r} crashed "
                    f"{len(self._crashes)} times within {app.restart_window:.0f}s "
                    f"(last exit code {code}); giving up instead of restarting it again"
                )
            backoff = min(10.0, 0.5 * 2 ** (len(self._crashes) - 1))
            logger.error(
                "worker process %s for connector %r exited unexpectedly with code %s; "
                "restarting in %.1fs (crash %d of %d allowed within %.0fs)",
                pid,
                self._name,
                code,
                backoff,
                len(self._crashes),
                app.max_restarts,
                app.restart_window,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff)
            if stopping.is_set():
                return

    async def _wait_exit_or_stop(self, proc: BaseProcess, stopping: asyncio.Event) -> bool:
        """True when stopping was asked for, False when the process exited by itself."""
        exited = _exit_event(proc)
        exit_waiter = asyncio.create_task(exited.wait())
        stop_waiter = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait([exit_waiter, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            exit_waiter.cancel()
            stop_waiter.cancel()
        return not exited.is_set()

    async def _stop_process(self, proc: BaseProcess) -> None:
        """SIGTERM, wait for the child's own graceful shutdown, then SIGKILL; always reaped."""

        async def stop() -> None:
            exited = _exit_event(proc)
            if not exited.is_set() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), self._app.shutdown_timeout + 2.0)
            if not exited.is_set():
                logger.error(
                    "worker process %s of connector %r did not stop in time; killing it",
                    proc.pid,
                    self._name,
                )
                proc.kill()
            await asyncio.to_thread(proc.join)
            proc.close()
            logger.info("worker process for connector %r stopped", self._name)

        await asyncio.shield(stop())


def _exit_event(proc: BaseProcess) -> asyncio.Event:
    """An event set when ``proc`` exits, driven by its sentinel fd: no polling."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    if proc.exitcode is not None:
        event.set()
        return event
    sentinel = proc.sentinel

    def on_exit() -> None:
        loop.remove_reader(sentinel)
        event.set()

    loop.add_reader(sentinel, on_exit)
    return event


def install_stop_signals(stopping: asyncio.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stopping`` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        loop.add_signal_handler(signum, stopping.set)

    def undo() -> None:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, handler)

    return undo
