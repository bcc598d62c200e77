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
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Literal

from ._errors import WorkerCrashedError
from ._private import loop_signal_callback
from ._telemetry import open_reporting
from ._worker import build_workers
from .connectors.support import Backoff, set_worker_slot

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
# A child that failed after it had started consuming (an error out of the worker loop).
EXIT_CRASHED = 1
# A child whose graceful stop did not end within shutdown_timeout + _HARD_EXIT_AFTER seconds
# (a handler swallowing its cancellation, its parent gone so nobody kills it): it exits hard.
EXIT_STOP_TIMED_OUT = 71

# SIGHUP (the terminal or the session went away; process managers send it too) stops as
# gracefully as SIGTERM and SIGINT, in the parent and in every worker process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Shutdown hooks get what is left of the shutdown timeout after the handlers, but at least this.
_HOOK_FLOOR = 1.0
# The supervisor SIGKILLs a worker process that is still stopping this long after the timeout.
_KILL_AFTER = 2.0
# A worker process exits hard this long after the timeout, should no supervisor kill it.
_HARD_EXIT_AFTER = 3.0
# How often a worker process checks that its parent is alive (PDEATHSIG may not fire).
PARENT_CHECK_INTERVAL = 1.0
# A worker process stopped from outside (exit code 0) is restarted after this pause, unless
# the parent is stopping too (a process manager signalling the whole group).
_OUTSIDE_STOP_PAUSE = 0.5
# A crashed worker process is restarted after 0.5 s, doubling per crash in the window, at most 10 s.
_RESTART_BACKOFF = Backoff(initial=0.5, maximum=10.0)


def process_context() -> ForkContext | SpawnContext:
    """fork on platforms that have it: the child inherits the registrations of a script with no
    ``if __name__ == "__main__"`` guard. Elsewhere spawn, which needs an importable module."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class Progress:
    """How far ``serve()`` got when it failed: ``consuming`` is False for a failure at start-up
    (a start-up hook, a connector's ``on_start``), True for one after consuming had begun."""

    __slots__ = ("consuming",)

    def __init__(self) -> None:
        self.consuming = False


async def serve(
    app: App,
    connector_names: Iterable[str],
    stopping: asyncio.Event,
    progress: Progress | None = None,
) -> None:
    """Run the workers of these connectors in this loop until ``stopping`` is set, then let
    in-flight handlers finish within ``app.shutdown_timeout`` and cancel the rest; the shutdown
    hooks get what is left of that timeout (at least ``_HOOK_FLOOR`` seconds).

    A stop during the start-up hooks cancels the one running and returns: no consuming, no
    shutdown hooks. A worker that fails stops the others and is raised."""
    names = set(connector_names)
    progress = progress or Progress()
    if not await app.run_startup_hooks(stopping):
        return
    workers = build_workers(app, names, stopping)
    reporting = open_reporting(app, workers)
    tasks = [asyncio.create_task(w.run(), name=f"romeways:{w.route.queue_name}") for w in workers]
    progress.consuming = True
    stop_waiter = asyncio.create_task(stopping.wait())
    unasked = False
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait([*tasks, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        unasked = not stopping.is_set()
    finally:
        stopping.set()
        stop_waiter.cancel()
        deadline = loop.time() + app.shutdown_timeout
        await _drain(tasks, app.shutdown_timeout)
        await app.run_shutdown_hooks(max(_HOOK_FLOOR, deadline - loop.time()))
        await app.close_publishers()
        await reporting.close()
    for worker, task in zip(workers, tasks, strict=True):
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            # A worker that never got a fetch back failed in its connector's start-up.
            progress.consuming = worker.probe.last_poll is not None
            raise failure
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


HookEnd = Literal["done", "stopped", "timeout"]


async def run_hook(
    hook: Callable[[], Awaitable[object]],
    *,
    deadline: float | None,
    stopping: asyncio.Event | None = None,
) -> HookEnd:
    """Await ``hook()`` in this task (its context variables stay), cancelling it when the loop
    time ``deadline`` passes ("timeout") or ``stopping`` is set ("stopped"); "done" when it
    returned by itself. Its own exceptions (its own TimeoutError too) propagate."""
    bound = asyncio.timeout_at(deadline)
    stopped: list[bool] = []
    watcher: asyncio.Task[None] | None = None
    try:
        async with bound:
            if stopping is not None:
                watcher = asyncio.create_task(_expire_on(stopping, bound, stopped))
            await hook()
    except TimeoutError:
        if not bound.expired():
            raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if not bound.expired():
        return "done"
    return "stopped" if stopped else "timeout"


async def _expire_on(stopping: asyncio.Event, bound: asyncio.Timeout, stopped: list[bool]) -> None:
    await stopping.wait()
    stopped.append(True)
    with contextlib.suppress(RuntimeError):  # the hook's block was already left
        bound.reschedule(asyncio.get_running_loop().time())


def _child_main(app: App, connector_name: str, parent_pid: int, slot: int = 0) -> None:
    """Entry point of a worker process: its own event loop and signal handlers. ``slot`` is its
    place among the connector's processes (``worker_identity`` names consumers by it)."""
    set_worker_slot(slot)
    # Stop signals arrive blocked (see _stop_signals_blocked): swap the parent's handlers and
    # its loop's wake-up pipe for ours first, so an early SIGTERM is kept, not lost or misrouted.
    signal.set_wakeup_fd(-1)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note_early_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent(parent_pid)
    guard = _ParentGuard(parent_pid, connector_name, app.shutdown_timeout)
    guard.start()
    try:
        asyncio.run(_child_serve(app, connector_name, guard))
    except StartupFailed:
        sys.exit(EXIT_STARTUP_FAILED)
    except WorkerFailed:
        sys.exit(EXIT_CRASHED)
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError) as exc:
        logger.error(
            "worker process for connector %r stopped: a handler raised %s; its message is not "
            "acknowledged",
            connector_name,
            type(exc).__name__,
            exc_info=exc,
        )
        sys.exit(EXIT_ABORTED)
    finally:
        guard.finished()


_early_stops: list[int] = []


def _note_early_stop(signum: int, frame: object) -> None:
    _early_stops.append(signum)


@contextlib.contextmanager
def _stop_signals_blocked() -> Generator[None, None, None]:
    """Hold the stop signals back in this thread while a worker process is forked; the child
    unblocks them once its own handlers are in place."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StartupFailed(Exception):
    """Internal: a child could not start consuming; already logged."""


class WorkerFailed(Exception):
    """Internal: a child failed after it had started consuming; already logged."""


async def _child_serve(app: App, connector_name: str, guard: _ParentGuard) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    if _early_stops:
        stopping.set()
    arm = asyncio.create_task(_arm_on_stop(stopping, guard))
    progress = Progress()
    try:
        await serve(app, [connector_name], stopping, progress)
    except Exception as exc:
        what = "failed after it had started consuming" if progress.consuming else "could not start"
        logger.error(
            "worker process for connector %r %s: %s: %s",
            connector_name,
            what,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        raise (WorkerFailed if progress.consuming else StartupFailed) from exc
    finally:
        arm.cancel()


async def _arm_on_stop(stopping: asyncio.Event, guard: _ParentGuard) -> None:
    await stopping.wait()
    guard.stop_began.set()


class _ParentGuard:
    """A worker process's guard thread. Every ``PARENT_CHECK_INTERVAL`` seconds it checks that
    the parent is alive, and stops the worker once it is gone (PR_SET_PDEATHSIG is Linux-only,
    follows the thread that forked rather than the process, and code in the worker can reset
    it); once a stop has begun it gives the worker ``shutdown_timeout + _HARD_EXIT_AFTER``
    seconds, then exits hard. A thread, so that a busy or stuck event loop cannot stall it."""

    def __init__(self, parent_pid: int, connector_name: str, shutdown_timeout: float) -> None:
        self._parent_pid = parent_pid
        self._connector_name = connector_name
        self._limit = shutdown_timeout + _HARD_EXIT_AFTER
        self.stop_began = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="romeways-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finished(self) -> None:
        """The worker is done: exiting now is not a hard exit."""
        self._finished.set()
        self.stop_began.set()

    def _watch(self) -> None:
        while not self.stop_began.wait(PARENT_CHECK_INTERVAL):
            if os.getppid() != self._parent_pid:
                logger.error(
                    "worker process %d of connector %r: its parent process %d is gone; stopping",
                    os.getpid(),
                    self._connector_name,
                    self._parent_pid,
                )
                with contextlib.suppress(OSError):
                    os.kill(os.getpid(), signal.SIGTERM)
                break
        if self._finished.wait(self._limit):
            return
        logger.error(
            "worker process %d of connector %r did not stop within %.1fs of being asked "
            "(shutdown_timeout + %.0fs); exiting hard with code %d",
            os.getpid(),
            self._connector_name,
            self._limit,
            _HARD_EXIT_AFTER,
            EXIT_STOP_TIMED_OUT,
        )
        os._exit(EXIT_STOP_TIMED_OUT)


def die_with_parent(parent_pid: int) -> None:
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
    and gives up with WorkerCrashedError when it crashes too often. ``slot`` (0 to
    ``App.workers - 1``) stays the same across restarts and is handed to the process."""

    def __init__(self, app: App, connector_name: str, slot: int = 0) -> None:
        self._app = app
        self._name = connector_name
        self.slot = slot
        self._crashes: deque[float] = deque()
        self.process: BaseProcess | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        app = self._app
        while True:
            proc = process_context().Process(
                target=_child_main,
                args=(app, self._name, os.getpid(), self.slot),
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
            if code == 0:
                # A graceful stop nobody here asked for: a stop signal sent to the worker alone
                # (`kill <pid>`). Not a crash: restarted, not counted toward max_restarts.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), _OUTSIDE_STOP_PAUSE)
                if stopping.is_set():
                    return
                logger.warning(
                    "worker process %s for connector %r was stopped by a signal from outside "
                    "(exit code 0); restarting (not counted as a crash)",
                    pid,
                    self._name,
                )
                continue
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
            backoff = _RESTART_BACKOFF.delay(len(self._crashes))
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
                await asyncio.wait_for(exited.wait(), self._app.shutdown_timeout + _KILL_AFTER)
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


class _LoopStopSignals:
    """The stop-signal handlers of one event loop, shared by every App running in it: a signal
    stops them all, and the handlers that were there before come back when the last one ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: list[asyncio.Event] = []
        # Per signal: the Python-level handler, and the loop's own callback, if it had one.
        self.previous: dict[int, tuple[Any, tuple[Callable[..., object], tuple[Any, ...]] | None]]
        self.previous = {}
        for signum in STOP_SIGNALS:
            self.previous[signum] = (signal.getsignal(signum), loop_signal_callback(loop, signum))
            loop.add_signal_handler(signum, self.deliver, signum)

    def deliver(self, signum: int) -> None:
        logger.info(
            "received %s: stopping gracefully (%d app(s) in this process)",
            signal.Signals(signum).name,
            len(self.events),
        )
        for event in self.events:
            event.set()

    def restore(self) -> None:
        for signum, (handler, callback) in self.previous.items():
            self.loop.remove_signal_handler(signum)
            if callback is not None:
                self.loop.add_signal_handler(signum, callback[0], *callback[1])
                continue
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, handler)


_loop_stop_signals: dict[asyncio.AbstractEventLoop, _LoopStopSignals] = {}


def install_stop_signals(stopping: asyncio.Event) -> Callable[[], None]:
    """SIGTERM, SIGINT and SIGHUP set ``stopping`` (main thread only); returns the undo. Several
    Apps in one loop share the handlers: one signal stops them all, and the handlers of before
    are put back when the last of them undoes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    shared = _loop_stop_signals.get(loop)
    if shared is None:
        shared = _loop_stop_signals[loop] = _LoopStopSignals(loop)
    shared.events.append(stopping)

    def undo() -> None:
        shared.events.remove(stopping)
        if not shared.events:
            del _loop_stop_signals[loop]
            shared.restore()

    return undo
