"""An idle spawned memory worker sleeps: no busy polling (utime + stime from /proc)."""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing import Queue
from typing import Any

import pytest
from _core_helpers import cpu_seconds, get_from

import romeways

IDLE_SECONDS = 2.0
MAX_SHARE_OF_A_CORE = 0.05


@pytest.mark.parametrize("frequency", [1.0, 0.05, 0.0])
def test_idle_spawned_memory_worker_uses_almost_no_cpu(frequency: float) -> None:
    app = romeways.App(shutdown_timeout=2.0)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem-idle"),
        spawn_process=True,
    )

    @app.on_startup
    async def announce() -> None:
        results.put(os.getpid())

    @app.queue_consumer(
        queue_name="q.idle",
        config=romeways.MemoryQueueConfig(
            connector_name="mem-idle", queue=queue, frequency=frequency
        ),
    )
    async def handler(message: romeways.Message) -> None:
        results.put(message.payload)

    async def main() -> tuple[float, float]:
        task = asyncio.create_task(app.start())
        try:
            pid = int(await get_from(results, 10))
            # It consumes (so it is really up), then idles.
            queue.put("wake")
            assert await get_from(results, 10) == "wake"
            await asyncio.sleep(0.3)
            cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(IDLE_SECONDS)
            cpu = cpu_seconds(pid) - cpu_before
            wall = time.monotonic() - wall_before
        finally:
            app.stop()
            await asyncio.wait_for(task, 8)
        return cpu, wall

    cpu, wall = asyncio.run(main())
    assert cpu / wall < MAX_SHARE_OF_A_CORE, f"idle worker used {cpu:.3f}s CPU in {wall:.2f}s"
