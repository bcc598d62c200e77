"""A memory-connector scenario app for the fault tests, run as a real process tree:
``python -m faults.memapp --ledger PATH [options]`` (PYTHONPATH=tests).

The parent creates the queue, registers one consumer on a worker process (spawn_process=True)
and a producer thread: a first burst of ``--count`` messages at ``--rate`` per second, then the
``boom`` message if ``--boom`` is given, then ``--burst2`` more once the file ``PATH.go`` exists.
The handler records ``start`` and ``done`` in the ledger around ``--handler-seconds`` of work;
``--no-pdeathsig`` makes the worker reset PR_SET_PDEATHSIG in a start-up hook;
the recording connector records ``fetched``, ``resend`` and ``ack``; dead letters are ``dead``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import threading
import time
from multiprocessing import Queue
from pathlib import Path

import romeways

from .ledger import Item, Ledger, make_ids, payload
from .recording import RecordingMemoryConnector, RecordingQueueConfig, setup_logging

BOOMS: dict[str, BaseException] = {
    "keyboard": KeyboardInterrupt(),
    "systemexit": SystemExit(),
    "cancelled": asyncio.CancelledError(),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--burst2", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--handler-seconds", type=float, default=0.0)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--frequency", type=float, default=0.2)
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    parser.add_argument("--boom", choices=sorted(BOOMS), default=None)
    parser.add_argument("--stubborn", action="store_true", help="g-000000 ignores cancellation")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument(
        "--no-pdeathsig", action="store_true", help="the worker resets PR_SET_PDEATHSIG"
    )
    args = parser.parse_args()
    setup_logging()
    ledger = Ledger(args.ledger)
    queue: Queue[bytes] = Queue()
    app = romeways.App(shutdown_timeout=args.shutdown_timeout, max_restarts=5)
    config = RecordingQueueConfig(
        connector_name="mem",
        queue=queue,
        ledger=args.ledger,
        max_chunk_size=args.chunk,
        sequential=args.sequential,
        frequency=args.frequency,
    )

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", letter.data.decode(errors="replace")[:40], letter.resend_times)

    @app.queue_consumer(queue_name="faults", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        item_id = message.payload.id
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == "boom" and args.boom is not None:
            raise BOOMS[args.boom]
        if args.handler_seconds:
            await asyncio.sleep(args.handler_seconds)
        while args.stubborn and item_id == "g-000000":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                ledger.write("ignored-cancel", item_id)
        ledger.write("done", item_id, message.rw_resend_times)

    if args.no_pdeathsig:

        @app.on_startup
        async def reset_pdeathsig() -> None:
            # As on a platform without it: the worker learns of its parent's death otherwise.
            ctypes.CDLL(None, use_errno=True).prctl(1, 0)  # PR_SET_PDEATHSIG, none
            ledger.write("no-pdeathsig", "worker")

    app.connector_register(
        connector=RecordingMemoryConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=not args.in_process,
    )

    def produce() -> None:
        for message_id in make_ids("g", args.count):
            queue.put(payload(message_id))
            ledger.write("produced", message_id)
            if args.rate:
                time.sleep(1.0 / args.rate)
        if args.boom is not None:
            queue.put(payload("boom"))
        if args.burst2:
            go = Path(args.ledger + ".go")
            while not go.exists():
                time.sleep(0.02)
            for message_id in make_ids("h", args.burst2):
                queue.put(payload(message_id))
                ledger.write("produced", message_id)

    threading.Thread(target=produce, daemon=True, name="producer").start()
    asyncio.run(app.start())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
