"""A lifespan and signal scenario app for the fault tests, run as a real process:
``python -m faults.lifeapp --ledger PATH [options]`` (PYTHONPATH=tests).

``--apps N`` Apps run in one event loop (``asyncio.gather`` of their ``start()``), each with a
memory connector of its own holding one message, in-process (``--spawn``: in a worker process).
Every App records ``up`` and ``down`` (its start-up and shutdown hooks, id ``appI``) and ``done``
(its message handled, id ``appI-msg``) in the ledger. App 0 can hang in a start-up hook
(``--hang-startup``, after recording ``hanging``) or in a shutdown hook (``--hang-shutdown``),
or stop itself once it handled its message (``--stop-first``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from multiprocessing import Queue

import romeways

from .ledger import Item, Ledger, payload
from .recording import setup_logging


def build(index: int, args: argparse.Namespace, ledger: Ledger) -> romeways.App:
    name = f"app{index}"
    app = romeways.App(shutdown_timeout=args.shutdown_timeout)
    if args.startup_timeout is not None:
        app.startup_timeout = args.startup_timeout
    queue: Queue[bytes] = Queue()
    queue.put(payload(f"{name}-msg"))
    config = romeways.MemoryQueueConfig(connector_name=f"mem{index}", queue=queue, frequency=0.1)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name=f"mem{index}"),
        spawn_process=args.spawn,
    )

    @app.on_startup
    async def up() -> None:
        ledger.write("up", name)

    @app.on_shutdown
    async def down() -> None:
        ledger.write("down", name)

    if index == 0 and args.hang_startup:

        @app.on_startup
        async def hang_at_startup() -> None:
            ledger.write("hanging", name)
            await asyncio.Event().wait()

    if index == 0 and args.hang_shutdown:

        @app.on_shutdown
        async def hang_at_shutdown() -> None:
            ledger.write("hanging", name)
            await asyncio.Event().wait()

    @app.queue_consumer(queue_name="q", config=config)
    async def handle(message: romeways.Message[Item]) -> None:
        ledger.write("done", message.payload.id)
        if index == 0 and args.stop_first:
            app.stop()

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--apps", type=int, default=1)
    parser.add_argument("--spawn", action="store_true")
    parser.add_argument("--hang-startup", action="store_true")
    parser.add_argument("--hang-shutdown", action="store_true")
    parser.add_argument("--stop-first", action="store_true")
    parser.add_argument("--startup-timeout", type=float, default=None)
    parser.add_argument("--shutdown-timeout", type=float, default=2.0)
    args = parser.parse_args()
    setup_logging()
    ledger = Ledger(args.ledger)
    apps = [build(i, args, ledger) for i in range(args.apps)]

    async def run_all() -> None:
        await asyncio.gather(*(app.start() for app in apps))

    asyncio.run(run_all())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
