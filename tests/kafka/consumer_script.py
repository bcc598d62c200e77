"""A Kafka consumer the tests run as a separate process: ``python consumer_script.py JSON``.

Its handler appends ``"<pid> <payload>\\n"`` to the ledger file with one ``write()`` on an
``O_APPEND`` descriptor (so lines of concurrent processes never mix), after sleeping ``sleep``
seconds. It runs until SIGTERM and exits 0 after a clean shutdown.

Settings (JSON object): bootstrap, topic, group, ledger, and optionally spawn (bool),
chunk (max_chunk_size), sequential, sleep, frequency, session_timeout_ms,
heartbeat_interval_ms, shutdown_timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import romeways


def main() -> None:
    settings = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    ledger_fd = os.open(settings["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sleep = float(settings.get("sleep", 0.0))

    app = romeways.App(shutdown_timeout=float(settings.get("shutdown_timeout", 10.0)))
    queue_config = romeways.KafkaQueueConfig(
        connector_name="kafka-test",
        topic=settings["topic"],
        group_id=settings["group"],
        frequency=float(settings.get("frequency", 0.5)),
        max_chunk_size=int(settings.get("chunk", 10)),
        sequential=bool(settings.get("sequential", False)),
        session_timeout_ms=int(settings.get("session_timeout_ms", 10_000)),
        heartbeat_interval_ms=int(settings.get("heartbeat_interval_ms", 3_000)),
    )

    @app.queue_consumer(queue_name="ledger", config=queue_config)
    async def handler(message: romeways.Message) -> None:
        if sleep:
            await asyncio.sleep(sleep)
        os.write(ledger_fd, f"{os.getpid()} {message.payload}\n".encode())

    app.connector_register(
        connector=romeways.KafkaQueueConnector,
        config=romeways.KafkaConnectorConfig(
            connector_name="kafka-test",
            bootstrap_server=settings["bootstrap"],
            client_id="romeways-test",
            startup_timeout=30.0,
        ),
        spawn_process=bool(settings.get("spawn", False)),
    )
    asyncio.run(app.start())
    print("consumer stopped cleanly", flush=True)


if __name__ == "__main__":
    main()
