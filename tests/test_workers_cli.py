"""`romeways run --workers N`: N supervised processes of the same app, stopped as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

APP = textwrap.dedent(
    """
    import asyncio
    import os
    from multiprocessing import Queue

    import romeways

    OUT = os.environ["OUT_DIR"]
    app = romeways.App(shutdown_timeout=2.0)
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=Queue(), frequency=0.1, max_chunk_size=1
    )
    # spawn_process=False: --workers moves the connector into worker processes anyway
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )


    @app.queue_consumer(queue_name="jobs", config=config)
    async def work(message: romeways.Message[int]) -> None:
        await asyncio.sleep(0.02)
        with open(os.path.join(OUT, f"done-{message.payload}"), "w") as f:
            f.write(str(os.getpid()))


    jobs = app.publisher(work)


    @app.on_startup
    async def started() -> None:
        open(os.path.join(OUT, f"started-{os.getpid()}"), "w").close()
        if os.getpid() == min(int(n.split("-")[1]) for n in os.listdir(OUT) if n[:7] == "started"):
            for i in range(30):
                await jobs.publish(i)


    @app.on_shutdown
    async def stopped() -> None:
        open(os.path.join(OUT, f"stopped-{os.getpid()}"), "w").close()
    """
)


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def names(out: Path, prefix: str) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith(prefix)}


def test_workers_n_runs_n_supervised_processes_of_the_app(tmp_path: Path) -> None:
    (tmp_path / "scaled.py").write_text(APP)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OUT_DIR": str(out)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "romeways", "run", "scaled:app", "--workers", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(children(proc.pid)) == 3, 15, "3 worker processes")
        first = children(proc.pid)
        # every process ran the start-up hooks, and the queue's 30 jobs were all handled once
        wait_for(lambda: len(names(out, "started-")) == 3, 10, "3 start-ups")
        assert {int(n.split("-")[1]) for n in names(out, "started-")} == first
        wait_for(lambda: len(names(out, "done-")) == 30, 15, "30 jobs handled")
        handled_by = {int((out / n).read_text()) for n in names(out, "done-")}
        assert handled_by <= first and len(handled_by) >= 2  # the processes share the queue

        # supervised: a killed worker is restarted, and the count is back to 3
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in children(proc.pid) and len(children(proc.pid)) == 3,
            15,
            "a replacement worker",
        )
        current = children(proc.pid)
        assert len(current - first) == 1
        (replacement,) = current - first
        wait_for(lambda: f"started-{replacement}" in names(out, "started-"), 10, "its start-up")

        # SIGTERM to the parent only: every worker shuts down gracefully and is reaped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert {int(n.split("-")[1]) for n in names(out, "stopped-")} == current
        for pid in current:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "exited unexpectedly" in (proc.stderr.read() if proc.stderr else "")


def test_workers_must_be_a_positive_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "romeways", "run", "x:app", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers: give a count >= 1, not 0" in result.stderr


def test_sighup_to_romeways_run_stops_every_worker_gracefully(tmp_path: Path) -> None:
    """SIGHUP (a closed terminal, a process manager) to the parent of `romeways run --workers 2`
    is a graceful stop, like SIGTERM: each worker runs its shutdown hook, the parent exits 0.
    Before: SIGHUP killed the parent at once (exit -1), leaving the workers to PDEATHSIG."""
    (tmp_path / "scaled.py").write_text(APP)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OUT_DIR": str(out)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "romeways", "run", "scaled:app", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: set[int] = set()
    try:
        wait_for(lambda: len(names(out, "started-")) == 2, 15, "2 start-ups")
        workers = children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(15) == 0
        assert {int(n.split("-")[1]) for n in names(out, "stopped-")} == workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    assert "received SIGHUP: stopping gracefully" in (proc.stderr.read() if proc.stderr else "")
