"""Consumer names per worker slot: ``App.workers=2`` gives two consumers,
``<host>-<connector>-0`` and ``-1``; a worker SIGKILLed and restarted by its supervisor comes
back under its slot's name (no new consumer piles up in the group) and first reads what it held.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from faults.redishelp import add_entries, consumers, pending, run

import romeways
from romeways.connectors.redis import RedisQueueConnector

from ._redis_helpers import configs

Streams = Callable[[str], str]


def test_each_worker_slot_has_its_own_consumer_and_keeps_it_across_a_restart(
    redis_url: str, streams: Streams, tmp_path: Path
) -> None:
    stream = streams("slots")
    group = f"{stream}-g"
    log = tmp_path / "handled.txt"
    ids = [f"m{i:03d}" for i in range(60)]
    run(add_entries(redis_url, stream, [i.encode() for i in ids]))
    connector_config, queue_config = configs(
        redis_url, stream, max_chunk_size=5, sequential=True, claim_idle=30.0
    )
    app = romeways.App(shutdown_timeout=2.0, max_restarts=3)
    app.workers = 2
    app.connector_register(connector=RedisQueueConnector, config=connector_config)

    @app.queue_consumer(queue_name="q", config=queue_config)
    async def handle(message: romeways.Message) -> None:
        connector = romeways.context().connector
        assert isinstance(connector, RedisQueueConnector)
        line = f"{os.getpid()} {connector.consumer} {message.payload}\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)
        await asyncio.sleep(0.05)

    def records() -> list[tuple[int, str, str]]:
        if not log.exists():
            return []
        rows = [line.split(" ") for line in log.read_text().splitlines()]
        return [(int(pid), name, payload) for pid, name, payload in rows]

    async def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {records()}"
            await asyncio.sleep(0.05)

    async def main() -> tuple[int, dict[str, int]]:
        task = asyncio.create_task(app.start())
        try:
            await wait_for("both slots handling", lambda: len({r[1] for r in records()}) == 2)
            victim = next(pid for pid, name, _ in records() if name.endswith("-1"))
            os.kill(victim, signal.SIGKILL)
            await wait_for(
                "slot 1 back in a new process",
                lambda: any(p != victim and n.endswith("-1") for p, n, _ in records()[-20:]),
            )
            await wait_for("every message handled", lambda: set(ids) <= {r[2] for r in records()})
            names = await consumers(redis_url, stream, group)
        finally:
            app.stop()
            await task
        return victim, names

    victim, names = run(main(), timeout=60)
    host = socket.gethostname()
    assert set(names) == {f"{host}-redis-test-0", f"{host}-redis-test-1"}, names
    by_slot = {name: {pid for pid, n, _ in records() if n == name} for name in names}
    assert len(by_slot[f"{host}-redis-test-1"]) == 2 and victim in by_slot[f"{host}-redis-test-1"]
    assert len(by_slot[f"{host}-redis-test-0"]) == 1, "slot 0 was never restarted"
    handled = [payload for _, _, payload in records()]
    assert set(handled) == set(ids)  # 0 lost
    assert len(handled) - len(ids) <= 5  # at most the chunk slot 1 held again
    assert run(pending(redis_url, stream, group)) == []
