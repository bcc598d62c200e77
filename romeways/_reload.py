"""``romeways run --reload``: run the app in a child process and restart it, stopped gracefully,
whenever a Python source file under the watched directories changes. For development only."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._errors import RomewaysError
from ._runner import STOP_SIGNALS, die_with_parent

logger = logging.getLogger("romeways")

INSTALL_HINT = "pip install 'romeways[reload]'"
# The reloader tells its child where to write the app's shutdown timeout once the app is loaded
# (the parent never imports the app: its code may not even compile), and which pid is its parent.
READY_ENV = "ROMEWAYS_RELOAD_READY"
PARENT_ENV = "ROMEWAYS_RELOAD_PARENT"
# The child is SIGKILLed this long past its app's shutdown timeout: beyond the 2 s after which a
# supervisor kills its worker processes and the 1 s floor of the shutdown hooks.
KILL_AFTER = 5.0
# The shutdown timeout assumed for a child that has not loaded its app yet (App's default).
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
# A change log line names at most this many files.
_MAX_LISTED = 10


def child_argv(argv: Sequence[str]) -> list[str]:
    """The command line without ``--reload`` and ``--reload-dir`` (in any form argparse takes:
    ``--reload-dir DIR``, ``--reload-dir=DIR``, an unambiguous prefix such as ``--reload-d``);
    every other option passes through to the child unchanged."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            kept.append(token)
            kept.extend(tokens)
            break
        name, equals, _ = token.partition("=")
        if name == "--reload":
            continue
        if len(name) > len("--reload") and "--reload-dir".startswith(name):
            if not equals:
                next(tokens, None)
            continue
        kept.append(token)
    return kept


def follow_parent() -> None:
    """In a child of the reloader (else nothing): die with the reloader should it be killed,
    rather than run on as an orphan."""
    parent = os.environ.pop(PARENT_ENV, None)
    # Only when the reloader is the parent: a launcher between them (an interpreter stub that
    # starts the real one) is the parent then, and following it would stop the app at once.
    if parent is not None and parent == str(os.getppid()):
        die_with_parent(int(parent))


def note_loaded(shutdown_timeout: float) -> None:
    """In a child of the reloader (else nothing): tell it the app's shutdown timeout, which
    bounds how long the graceful stop it asks for may take."""
    ready = os.environ.pop(READY_ENV, None)
    if ready:
        with contextlib.suppress(OSError):
            Path(ready).write_text(repr(shutdown_timeout))


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Child:
    """The app's current run: a ``romeways run`` process without ``--reload``."""

    def __init__(self, command: list[str], ready: Path) -> None:
        self._command = command
        self._ready = ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._asked = threading.Event()
        self._exited = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ready.unlink()
        env = {**os.environ, READY_ENV: str(self._ready), PARENT_ENV: str(os.getpid())}
        proc = subprocess.Popen(self._command, env=env)
        self._proc = proc
        self._asked = asked = threading.Event()
        self._exited = exited = threading.Event()
        logger.info("reload: started the app in process %d", proc.pid)
        threading.Thread(
            target=self._wait, args=(proc, asked, exited), name="romeways-reload", daemon=True
        ).start()

    @staticmethod
    def _wait(
        proc: subprocess.Popen[bytes], asked: threading.Event, exited: threading.Event
    ) -> None:
        code = proc.wait()
        exited.set()
        if not asked.is_set():
            logger.error(
                "reload: the app (process %d) exited by itself (%s); waiting for a change to "
                "a watched file to start it again",
                proc.pid,
                _exit_text(code),
            )

    def _grace(self) -> float:
        try:
            timeout = float(self._ready.read_text())
        except (OSError, ValueError):
            timeout = DEFAULT_SHUTDOWN_TIMEOUT
        return timeout + KILL_AFTER

    def stop(self) -> None:
        """SIGTERM, so that the app drains and runs its shutdown hooks; SIGKILL only once its
        shutdown timeout + ``KILL_AFTER`` seconds have passed. Returns once it is reaped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._asked.set()
        if self._exited.is_set():
            return  # exited by itself: already reported
        grace = self._grace()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        if not self._exited.wait(grace):
            logger.error(
                "reload: the app (process %d) did not stop within %.1fs (its shutdown timeout "
                "+ %.0fs); killing it",
                proc.pid,
                grace,
                KILL_AFTER,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self._exited.wait()
        logger.info("reload: the app (process %d) stopped (%s)", proc.pid, _exit_text(proc.wait()))


def _describe(changes: Iterable[tuple[object, str]]) -> str:
    names = sorted({os.path.relpath(path) for _, path in changes})
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f" and {len(names) - _MAX_LISTED} more"
    return shown


def run_reload(argv: Sequence[str], dirs: Sequence[str]) -> int:
    """Run ``romeways`` with ``argv`` less its reload options in a child process; restart it on
    every change to a ``*.py`` file under ``dirs`` (default: the current directory). A stop
    signal stops the child gracefully and returns 0."""
    try:
        import watchfiles
    except ImportError as exc:
        raise RomewaysError(
            f"--reload needs the watchfiles package, which is not installed: {INSTALL_HINT}"
        ) from exc
    roots = [Path(d).resolve() for d in dirs or ["."]]
    for root in roots:
        if not root.is_dir():
            raise RomewaysError(f"--reload-dir {root}: no such directory; give one to watch")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("reload: received %s: stopping the app", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    command = [sys.executable, "-m", "romeways", *child_argv(argv)]
    try:
        with tempfile.TemporaryDirectory(prefix="romeways-reload-") as scratch:
            child = _Child(command, Path(scratch) / "loaded")
            logger.info(
                "reload: watching *.py under %s (not for production)",
                ", ".join(str(root) for root in roots),
            )
            try:
                child.start()
                for changes in watchfiles.watch(
                    *roots,
                    watch_filter=watchfiles.PythonFilter(),
                    stop_event=stop,
                    raise_interrupt=False,
                ):
                    logger.info("reload: changed: %s; restarting the app", _describe(changes))
                    child.stop()
                    if stop.is_set():
                        break
                    child.start()
            finally:
                child.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    logger.info("reload: stopped")
    return 0
