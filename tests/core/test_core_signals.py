"""A worker process told to stop the instant it is forked still stops gracefully."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import romeways
from romeways._runner import Supervisor


def test_sigterm_right_after_fork_is_kept_until_the_worker_can_stop_gracefully(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    queue: multiprocessing.Queue[bytes] = multiprocessing.Queue()
    app = romeways.App(shutdown_timeout=3)
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.1)

    @app.queue_consumer(queue_name="q", config=config)
    async def handle(message: romeways.Message) -> None:
        return None

    @app.on_shutdown
    async def mark_shutdown() -> None:
        with marks.open("a") as f:
            f.write("shutdown\n")

    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=True,
    )

    async def main() -> None:
        stopping = asyncio.Event()
        stopping.set()  # the supervisor sends SIGTERM as soon as the child exists
        await asyncio.wait_for(Supervisor(app, "mem").run(stopping), 15)

    for _ in range(3):
        asyncio.run(main())
    assert marks.read_text().splitlines() == ["shutdown"] * 3
