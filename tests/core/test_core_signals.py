"""Stop signals and lifespan bounds: a worker process told to stop the instant it is forked
still stops gracefully; start-up hooks are bounded; Apps in one loop share the stop signals."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest
from _core_helpers import Feed, children_of, scripted_app

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


@pytest.mark.parametrize("spawn", [False, True], ids=["in_process", "spawn_process"])
def test_startup_timeout_cancels_a_hung_startup_hook_and_fails_start(spawn: bool) -> None:
    """A start-up hook that never returns is cancelled after App.startup_timeout and start()
    fails naming it (in a worker process: exit 78, WorkerCrashedError). Before: start() hung."""
    queue: multiprocessing.Queue[bytes] = multiprocessing.Queue()
    app = romeways.App(shutdown_timeout=2.0, max_restarts=5)
    app.startup_timeout = 0.5
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=spawn,
    )
    cancelled: list[str] = []

    @app.on_startup
    async def wait_for_a_database() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("yes")
            raise

    @app.queue_consumer(
        queue_name="q", config=romeways.MemoryQueueConfig(connector_name="mem", queue=queue)
    )
    async def handler(message: romeways.Message) -> None:
        pass

    before = set(children_of(os.getpid()))
    began = time.monotonic()
    expected = romeways.WorkerCrashedError if spawn else romeways.RomewaysError
    with pytest.raises(expected) as info:
        asyncio.run(asyncio.wait_for(app.start(), 5))
    assert time.monotonic() - began < 4
    if spawn:
        assert "failed at start-up" in str(info.value)
    else:
        assert "wait_for_a_database did not finish within App.startup_timeout=0.5s" in str(
            info.value
        )
        assert cancelled == ["yes"]
    assert not set(children_of(os.getpid())) - before


def test_apps_in_one_loop_share_the_stop_signals_and_give_back_the_handlers_of_before() -> None:
    """Two Apps in one loop: one SIGHUP stops both; once one stopped by itself, SIGTERM still
    stops the other; after the last, the handlers of before are back (a Python-level one, and
    one the loop had). Before: the second App's handler replaced the first's (SIGHUP stopped
    only it), and the first to stop took the handler away from the other."""
    assert threading.current_thread() is threading.main_thread()
    to_previous: list[int] = []

    def previous_handler(signum: int, frame: FrameType | None) -> None:
        to_previous.append(signum)

    saved = {s: signal.signal(s, previous_handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    feeds = [Feed(), Feed()]
    apps: list[romeways.App] = []
    for feed in feeds:
        app, config = scripted_app(feed)

        @app.queue_consumer(queue_name="q", config=config)
        async def handler(message: romeways.Message) -> None:
            pass

        apps.append(app)

    async def start_both() -> list[asyncio.Task[None]]:
        already = [feed.started for feed in feeds]
        tasks = [asyncio.create_task(app.start()) for app in apps]
        deadline = time.monotonic() + 5
        while any(f.started == n for f, n in zip(feeds, already, strict=True)):
            assert time.monotonic() < deadline, "the apps did not start consuming"
            await asyncio.sleep(0.01)
        return tasks

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_handler_ran = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, loop_handler_ran.set)  # the loop's, from before
        try:
            tasks = await start_both()
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            assert not loop_handler_ran.is_set()

            tasks = await start_both()
            apps[0].stop()
            await asyncio.wait_for(tasks[0], 5)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(tasks[1], 5)
            assert to_previous == []

            assert signal.getsignal(signal.SIGTERM) is previous_handler
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.wait_for(loop_handler_ran.wait(), 5)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    try:
        asyncio.run(main())
    finally:
        for signum, old in saved.items():
            signal.signal(signum, old)
