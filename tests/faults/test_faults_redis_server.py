"""The Redis server going away under a running consumer: a private redis-server SIGKILLed
mid-run and started again from its append-only file (R6), and a network cut through the test's
blackhole proxy longer than the socket timeout (R7). The worker reconnects with backoff, logs
the outage once and its end once, uses next to no CPU meanwhile, and loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kafkahelp import BlackholeProxy
from .ledger import make_ids, payload
from .procs import Scenario, cpu_seconds
from .redisapp import scenario_args
from .redishelp import (
    HOST,
    RedisServer,
    add_entries,
    delete_streams,
    free_port,
    pending,
    run,
    shared_url,
    unique,
)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as private:
        yield private


def test_redis_server_killed_and_restarted_from_its_aof_mid_run_resumes(
    tmp_path: Path, server: RedisServer
) -> None:
    """R6: SIGKILL the private server (appendfsync always) while 300 entries are being
    handled, keep it away 3 s, start it again on the same port: the same worker process goes
    on; "lost contact" and "reached ... again" are logged once each; the worker used under 5 %
    of a core while the server was away; 0 lost, nothing left pending."""
    url, stream = server.url, unique("aof")
    group = f"{stream}-g"
    ids = make_ids("r6", 300)
    run(add_entries(url, stream, [payload(i) for i in ids]))
    options = scenario_args(
        url, stream, group, chunk=10, handler_seconds=0.01, sequential=True, socket_timeout=2.0
    )
    with Scenario(tmp_path, "redisapp", *options) as app:
        app.wait_for("80 handled", lambda lg: len(lg.ids("done")) >= 80, 30)
        server.kill()
        app.wait_log(r"lost contact with redis://127\.0\.0\.1:\d+/0", 10)
        before = cpu_seconds(app.pid)
        time.sleep(3.0)
        away_cpu = (cpu_seconds(app.pid) - before) / 3.0 * 100
        server.start()
        app.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 40)
        ledger = app.ledger
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        assert tally.duplicate_count <= 20, tally.summary()
        assert ledger.pids("done") == [app.pid], "the worker was restarted"
        log = app.log()
        assert log.count("lost contact with") == 1, app.tail()
        assert log.count("reached redis://") == 1, app.tail()
        assert away_cpu < 5.0, f"{away_cpu:.1f}% of a core while the server was away"
        deadline = time.monotonic() + 5
        while run(pending(url, stream, group)):
            assert time.monotonic() < deadline, "entries left pending"
            time.sleep(0.1)
    print(f"R6 redis AOF restart: {tally.summary()}; {away_cpu:.2f}% CPU while away")


def test_redis_network_cut_longer_than_the_socket_timeout_resumes_without_restart(
    tmp_path: Path,
) -> None:
    """R7: the test's blackhole proxy in front of Redis drops every byte for 5 s (socket
    timeout 1.5 s), then forwards again: the consumer notices within the socket timeout, logs
    the outage and its end once each, is not restarted, and handles every message once more
    or less (what was in flight may come twice), none lost."""
    redis_url = shared_url()
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    target = int(host_port.rsplit(":", 1)[1]) if ":" in host_port else 6379
    proxy = BlackholeProxy(free_port(), target)
    url = f"redis://{HOST}:{proxy.listen_port}/0"
    stream = unique("cut")
    group = f"{stream}-g"
    ids = make_ids("r7", 200)
    try:
        run(add_entries(redis_url, stream, [payload(i) for i in ids[:100]]))
        options = scenario_args(
            url, stream, group, chunk=10, handler_seconds=0.01, socket_timeout=1.5
        )
        with Scenario(tmp_path, "redisapp", *options) as app:
            app.wait_for("100 handled", lambda lg: len(lg.ids("done")) >= 100, 30)
            proxy.cut()
            cut_at = time.time()
            run(add_entries(redis_url, stream, [payload(i) for i in ids[100:]]))
            match = app.wait_log(r"lost contact with redis://", 10)
            noticed = float(match.string[: match.start()].rsplit("\n", 1)[-1].split(" ", 1)[0])
            time.sleep(max(0.0, 5.0 - (time.time() - cut_at)))
            proxy.restore()
            app.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 40)
            ledger = app.ledger
            tally = ledger.tally(ids)
            assert tally.lost == set(), tally.summary()
            assert ledger.pids("done") == [app.pid], "the worker was restarted"
            assert noticed - cut_at < 1.5 + 1.5, f"noticed {noticed - cut_at:.1f}s after the cut"
            log = app.log()
            assert log.count("lost contact with") == 1, app.tail()
            assert log.count("reached redis://") == 1, app.tail()
            assert "Traceback" not in log, app.tail()
    finally:
        proxy.close()
        run(delete_streams(redis_url, stream))
    print(f"R7 redis network cut: {tally.summary()}; noticed after {noticed - cut_at:.1f}s")
