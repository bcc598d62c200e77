"""Process helpers for the fault tests (Linux): run a scenario app as a real process tree, signal
it, read its log, find any process it left behind, and measure CPU time from /proc.

Every process a scenario starts (the app's parent and its forked workers) carries the scenario's
unique ledger path in its command line, so ``survivors()`` finds exactly the processes this test
started, and ``cleanup()`` stops only those, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .ledger import Ledger

TESTS_DIR = Path(__file__).resolve().parent.parent
ROOT = TESTS_DIR.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (``R``, ``S``, ``Z`` ...), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    state = process_state(pid)
    return state is not None and state != "Z"


def pids_with_token(token: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Scenario:
    """A scenario app (``python -m faults.<module> --ledger PATH ...``) run as a real process in
    its own session, its output in a log file; the ledger path marks its process tree."""

    def __init__(
        self,
        tmp_path: Path,
        module: str,
        *args: str,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ):
        """Scenarios of one test share the ledger (and so the token); ``name`` tells their
        logs apart."""
        self.ledger = Ledger(tmp_path / f"{module}-ledger.jsonl")
        self.token = str(self.ledger.path)
        self.log_path = tmp_path / f"{name or module}.log"
        command = [sys.executable, "-m", f"faults.{module}", "--ledger", self.token, *args]
        full_env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the log; AssertionError (with the log) after
        ``timeout`` seconds or if the app exits first."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the app exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                    + self.log()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the log after {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def wait_for(self, what: str, check: Callable[[Ledger], bool], timeout: float) -> None:
        """Poll ``check(ledger)`` until true; AssertionError with the log tail after
        ``timeout`` seconds or as soon as the app's parent exits."""
        deadline = time.monotonic() + timeout
        while not check(self.ledger):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the app exited ({self.proc.returncode}) while waiting for {what}:\n"
                    + self.tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}:\n{self.tail()}"
                )
            time.sleep(0.05)

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def signal(self, signum: int) -> float:
        """Send ``signum`` to the app's parent process only; returns when (time.time())."""
        os.kill(self.proc.pid, signum)
        return time.time()

    def wait_exit(self, timeout: float) -> int:
        """The parent's exit code; AssertionError if it is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the app did not exit within {timeout}s:\n{self.tail()}"
            ) from None

    def survivors(self) -> list[int]:
        """Processes of this scenario still alive (the parent included, if it is)."""
        return pids_with_token(self.token)

    def cleanup(self) -> None:
        """SIGKILL whatever this scenario left running (by PID) and reap the parent."""
        for pid in self.survivors():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def __enter__(self) -> Scenario:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def log_time(line_match: re.Match[str]) -> float:
    """The time.time() stamp at the start of the scenario log line containing ``line_match``."""
    text = line_match.string
    start = text.rfind("\n", 0, line_match.start()) + 1
    return float(text[start:].split(" ", 1)[0])


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to exit; the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
