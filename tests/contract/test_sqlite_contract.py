"""The example SQLite connector passes the connector contract as an at-least-once connector,
and a worker process killed with SIGKILL mid-chunk loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlite_connector import (
    SQLiteConnectorConfig,
    SQLiteQueueConfig,
    SQLiteQueueConnector,
    enqueue,
    rows,
)

import romeways
from romeways.testing import ConnectorContract

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


class TestSQLiteConnectorContract(ConnectorContract[SQLiteConnectorConfig, SQLiteQueueConfig]):
    connector = SQLiteQueueConnector
    redelivers_unacked = True
    timeout = 30.0
    delivery_timeout = 10.0

    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "queues.db")

    async def make_configs(
        self, queue_name: str
    ) -> tuple[SQLiteConnectorConfig, SQLiteQueueConfig]:
        # A long visibility timeout: redelivery within a check comes from close() giving
        # claims back, not from claims running out.
        return (
            SQLiteConnectorConfig(connector_name="sqlite", path=self.path),
            SQLiteQueueConfig(connector_name="sqlite", visibility_timeout=60.0),
        )


_WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    sys.path.insert(0, {here!r})
    import romeways
    from sqlite_connector import SQLiteConnectorConfig, SQLiteQueueConfig, SQLiteQueueConnector

    path, log = sys.argv[1], sys.argv[2]
    app = romeways.App()
    config = SQLiteQueueConfig(
        connector_name="db", max_chunk_size=2, frequency=0.1, sequential=True,
        visibility_timeout=1.0,
    )

    @app.queue_consumer(queue_name="jobs", config=config)
    async def handle(message: romeways.Message) -> None:
        with open(log, "a") as out:
            out.write(message.payload + "\\n")
            out.flush()
            os.fsync(out.fileno())
        if message.payload == "job-4":
            await asyncio.Event().wait()  # stuck here until SIGKILL

    app.connector_register(
        connector=SQLiteQueueConnector,
        config=SQLiteConnectorConfig(connector_name="db", path=path),
    )
    asyncio.run(app.start())
    """
)


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkilled_worker_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "queues.db")
    log = tmp_path / "handled.log"
    jobs = [f"job-{i}" for i in range(10)]
    enqueue(path, "jobs", (job.encode() for job in jobs))

    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER.format(here=str(HERE)), path, str(log)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while "job-4" not in _read_lines(log):
            assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
            assert time.monotonic() < deadline, f"the worker handled only {_read_lines(log)}"
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=10)
        if worker.stderr is not None:
            worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL
    assert _read_lines(log) == jobs[:5]

    # The chunks finished before the kill were deleted; job-4 (stuck) and job-5 (same chunk)
    # are still claimed by the dead worker; the rest were never fetched.
    left = rows(path, "jobs")
    assert [body.decode() for body, _ in left] == jobs[4:]
    assert [claimed for _, claimed in left] == [True, True, False, False, False, False]

    # Another worker gets every one of them once the dead worker's claims run out.
    handled: list[str] = []

    async def run_again() -> None:
        app = romeways.App(shutdown_timeout=2.0)
        config = SQLiteQueueConfig(connector_name="db", frequency=0.1, sequential=True)

        @app.queue_consumer(queue_name="jobs", config=config)
        async def handle(message: romeways.Message) -> None:
            handled.append(message.payload)
            if len(handled) == len(jobs[4:]):
                app.stop()

        app.connector_register(
            connector=SQLiteQueueConnector,
            config=SQLiteConnectorConfig(connector_name="db", path=path),
        )
        await asyncio.wait_for(app.start(), 20)

    while any(claimed for _, claimed in rows(path, "jobs")):
        time.sleep(0.05)  # the 1 s visibility timeout of the dead worker's claims
    asyncio.run(run_again())
    assert handled == jobs[4:]
    assert rows(path, "jobs") == []
