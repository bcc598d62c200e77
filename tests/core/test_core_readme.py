"""The quick-start example (README.md and docs/index.md), run as a script (module level, no
main guard) in a subprocess for both spawn modes, stopped by a signal to the parent only: exit 0
in time, no child process left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _core_helpers import children_of, is_running, wait_for

MESSAGES = ["payment-1", "payment-2", "payment-3"]

README_EXAMPLE = """\
from multiprocessing import Queue
import asyncio
import romeways

queue = Queue()
for text in {messages!r}:
    queue.put(text)
config_q = romeways.MemoryQueueConfig(connector_name="memory-dev1", queue=queue{extra})

@romeways.queue_consumer(queue_name="queue.payment.done", config=config_q)
async def controller(message: romeways.Message):
    print(message, flush=True)

config_p = romeways.MemoryConnectorConfig(connector_name="memory-dev1")
romeways.connector_register(
    connector=romeways.MemoryQueueConnector, config=config_p, spawn_process={spawn}
)
asyncio.run(romeways.start())
"""

SHUTDOWN_TIMEOUT = 10.0  # the default App's


def cleanup(proc: subprocess.Popen[bytes], children: list[int]) -> None:
    """Kill what a failed test left behind: the script and any worker process it started."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in children:
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("spawn", [True, False], ids=["spawn_process", "in_process"])
def test_readme_example_runs_and_stops_cleanly(
    tmp_path: Path, spawn: bool, signum: signal.Signals
) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(README_EXAMPLE.format(messages=MESSAGES, spawn=spawn, extra=""))
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=err, cwd=tmp_path)
    children: list[int] = []
    try:
        expected = [f"Message(payload='{m}', rw_resend_times=0)" for m in MESSAGES]

        def all_printed() -> bool:
            return out_path.read_text().splitlines() == expected

        wait_for(all_printed, 10.0, f"printing {expected} (stderr: {err_path.read_text()})")
        children = children_of(proc.pid)
        if spawn:
            assert len(children) == 1, children
        else:
            assert children == []
        os.kill(proc.pid, signum)  # the parent only, as a process manager does
        started = time.monotonic()
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT)
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT
        assert code == 0, err_path.read_text()
        wait_for(lambda: not any(is_running(pid) for pid in children), 2.0, "children to be gone")
        assert out_path.read_text().splitlines() == expected
        assert "Traceback" not in err_path.read_text()
    finally:
        cleanup(proc, children)


@pytest.mark.parametrize("spawn", [True, False], ids=["spawn_process", "in_process"])
def test_idle_worker_with_a_long_frequency_stops_promptly(tmp_path: Path, spawn: bool) -> None:
    """A worker waiting for messages (frequency 30s, longer than the shutdown timeout) gives the
    wait up on SIGTERM instead of finishing it: nothing is in flight, so exit is quick."""
    script = tmp_path / "long_wait.py"
    long_wait = ", frequency=30.0"
    script.write_text(README_EXAMPLE.format(messages=MESSAGES[:1], spawn=spawn, extra=long_wait))
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=err)
    children: list[int] = []
    try:
        wait_for(lambda: bool(out_path.read_text()), 10.0, "the first message to be printed")
        time.sleep(0.3)  # now idle, waiting for the next message
        children = children_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - started
        assert code == 0, err_path.read_text()
        assert took < 3.0, f"took {took:.1f}s to stop; stderr: {err_path.read_text()}"
        wait_for(lambda: not any(is_running(pid) for pid in children), 2.0, "children to be gone")
        assert "did not stop in time" not in err_path.read_text()
    finally:
        cleanup(proc, children)


def test_worker_process_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL leaves the parent no chance to stop its children: they must notice by
    themselves (parent-death signal) rather than linger as orphans."""
    script = tmp_path / "killed_parent.py"
    script.write_text(README_EXAMPLE.format(messages=MESSAGES[:1], spawn=True, extra=""))
    out_path = tmp_path / "out.txt"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=out, stderr=subprocess.DEVNULL
        )
    children: list[int] = []
    try:
        wait_for(lambda: bool(out_path.read_text()), 10.0, "the first message to be printed")
        children = children_of(proc.pid)
        assert len(children) == 1
        proc.kill()
        proc.wait(timeout=5)
        wait_for(
            lambda: not any(is_running(pid) for pid in children),
            SHUTDOWN_TIMEOUT,
            f"worker process {children} to end after its parent was killed",
        )
    finally:
        cleanup(proc, children)
