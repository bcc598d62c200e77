"""Server trouble outside the fault suite: no server at start-up, and a server gone while a
consumer holds finished messages it has not acknowledged yet."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from faults.redishelp import RedisServer, add_entries, free_port, pending, run, unique

import romeways

from ._redis_helpers import Consumer


def test_no_server_at_start_is_retried_with_backoff_then_fails_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    consumer = Consumer(url, unique("absent"), startup_timeout=1.5)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="romeways"),
        pytest.raises(romeways.ConnectorError) as caught,
    ):
        run(consumer.connector.on_start())
    took = time.monotonic() - started
    assert 1.4 <= took < 3.0, took
    text = str(caught.value)
    assert f"could not reach {url} within startup_timeout=1.5s" in text
    retries = [r for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(retries) >= 2 and "retrying in 0.5s" in retries[0].getMessage()


@pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed")
def test_close_with_the_server_gone_is_bounded_and_the_entries_stay_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finished messages whose XACK has not gone out when the server dies: close() gives up
    within its 3 s bound, says they will be delivered again, and once the server is back (from
    its append-only file) they are still pending: delivered again, not lost."""
    server = RedisServer(tmp_path / "redis").start()
    stream = unique("gone")
    try:
        run(add_entries(server.url, stream, [b"a", b"b"]))

        async def main() -> float:
            consumer = Consumer(server.url, stream, socket_timeout=1.0)
            await consumer.connector.on_start()
            got = await consumer.fetch_until(2)
            await consumer.connector.ack([d for d, _ in got])  # waits for the next read
            server.kill()
            started = time.monotonic()
            await consumer.connector.close()
            return time.monotonic() - started

        with caplog.at_level(logging.WARNING, logger="romeways"):
            took = run(main())
        assert took < 3.5, took
        assert any("could not acknowledge 2 entries" in r.getMessage() for r in caplog.records)
        server.start()
        assert len(run(pending(server.url, stream, f"{stream}-g"))) == 2
    finally:
        server.kill()
