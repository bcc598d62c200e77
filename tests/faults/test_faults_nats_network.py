"""Server and network faults with the NATS JetStream connector, on private ``nats-server -js``
processes of the tests (file store in a temp dir, so a restart keeps the streams): the server
restarted mid-run (N4), and a silent network cut through the test's proxy (N5). The worker
process is never restarted: nats-py reconnects, the pull subscription resumes, the outage is
logged once and its end once, and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from broker import free_port

from .kafkahelp import BlackholeProxy
from .ledger import Ledger, make_ids
from .natsapp import scenario_args
from .natshelp import PrivateServer, add_stream, fully_acked, publish_ids, run
from .procs import Scenario, cpu_seconds

pytestmark = pytest.mark.timeout(120)


def _done_by(app: Scenario, ids: list[str]) -> bool:
    return set(ids) <= set(app.ledger.ids("done"))


def _worker(app: Scenario) -> int:
    (worker,) = [p for p in app.ledger.pids("done") if p != app.pid]
    return worker


def test_nats_server_restarted_mid_run_resumes_and_loses_nothing(tmp_path: Path) -> None:
    """N4: the private server is stopped while messages flow (the publisher keeps trying) and
    started again 3 s later on the same store. The worker process logs "lost contact" once and
    "reached ... again" once, uses next to no CPU while the server is away, and handles every
    message published before, during (retried by the publisher) and after: 0 lost."""
    with PrivateServer(tmp_path / "server") as server:
        server.start()
        stream = "N4"
        subject = f"faults.{stream}"
        run(add_stream(server.url, stream, subject))
        before, during, after = make_ids("b", 100), make_ids("m", 50), make_ids("a", 100)
        run(publish_ids(server.url, subject, before))
        options = scenario_args(server.url, stream, spawn=True, ack_wait=5.0)
        with Scenario(tmp_path, "natsapp", *options) as app:
            app.wait_for("the first batch", lambda lg: set(before) <= set(lg.ids("done")), 30)
            worker = _worker(app)
            server.stop()
            app.wait_log(r"lost contact with the NATS server", 10)
            used = cpu_seconds(worker)
            time.sleep(3.0)
            idle_cpu = (cpu_seconds(worker) - used) / 3.0
            # Published while the server comes back: the publisher retries until it is there.
            publisher = threading.Thread(
                target=lambda: run(_publish_when_back(server.url, subject, during, app.ledger))
            )
            publisher.start()
            server.start()
            publisher.join(30)
            run(publish_ids(server.url, subject, after))
            app.wait_for("every message", lambda lg: _done_by(app, [*before, *during, *after]), 40)
            app.wait_log(r"reached the NATS server .* again", 5)
            log = app.log()
            assert log.count("lost contact with the NATS server") == 1, log[-3000:]
            assert log.count("reached the NATS server") == 1
            assert "exited unexpectedly" not in log, "the worker was restarted"
            assert app.ledger.pids("done") == [worker]
            tally = app.ledger.tally([*before, *during, *after])
            assert tally.lost == set(), tally.summary()
            assert idle_cpu < 0.02, f"{idle_cpu:.1%} of a core while the server was away"
            deadline = time.monotonic() + 10
            while not fully_acked(server.url, stream, f"{stream}-d"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            app.signal(signal.SIGTERM)
            assert app.wait_exit(10) == 0
    print(f"N4 nats restart: {tally.summary()}; {idle_cpu:.2%} CPU while away")


async def _publish_when_back(url: str, subject: str, ids: list[str], ledger: Ledger) -> None:
    """Publish each id, retrying every 0.2 s while the server is away."""
    deadline = time.monotonic() + 25
    while True:
        try:
            await publish_ids(url, subject, ids, ledger=ledger)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_nats_silent_network_cut_resumes_without_restart(tmp_path: Path) -> None:
    """N5: the worker reaches the server through the test's proxy, which drops every byte,
    silently, for 6 s (the client's pings notice after about 2 s), then comes back. Messages
    published to the server meanwhile and after are all handled by the same worker process."""
    with PrivateServer(tmp_path / "server") as server:
        server.start()
        proxy_port = free_port()
        proxy = BlackholeProxy(proxy_port, server.port)
        try:
            stream = "N5"
            subject = f"faults.{stream}"
            run(add_stream(server.url, stream, subject))
            before, during, after = make_ids("b", 50), make_ids("c", 50), make_ids("a", 50)
            run(publish_ids(server.url, subject, before))
            options = scenario_args(
                f"nats://127.0.0.1:{proxy_port}", stream, spawn=True, ack_wait=5.0,
                ping_interval=1.0, max_outstanding_pings=2,
            )  # fmt: skip
            with Scenario(tmp_path, "natsapp", *options) as app:
                app.wait_for("the first batch", lambda lg: set(before) <= set(lg.ids("done")), 30)
                worker = _worker(app)
                proxy.cut()
                cut_at = time.time()
                run(publish_ids(server.url, subject, during))
                app.wait_log(r"lost contact with the NATS server", 10)
                time.sleep(max(0.0, cut_at + 6.0 - time.time()))
                assert proxy.dropped > 0, "the cut dropped nothing"
                proxy.restore()
                run(publish_ids(server.url, subject, after))
                app.wait_for(
                    "every message", lambda lg: _done_by(app, [*before, *during, *after]), 40
                )
                app.wait_log(r"reached the NATS server .* again", 10)
                assert "exited unexpectedly" not in app.log(), "the worker was restarted"
                assert app.ledger.pids("done") == [worker]
                tally = app.ledger.tally([*before, *during, *after])
                assert tally.lost == set(), tally.summary()
                app.signal(signal.SIGTERM)
                assert app.wait_exit(10) == 0
        finally:
            proxy.close()
    print(f"N5 nats network cut: {tally.summary()}, {proxy.dropped} bytes dropped")
