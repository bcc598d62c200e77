"""Liveness: every expected worker reported recently, and each is polling its connector (or is
busy handling, and not stuck far past the bound of a handler or dead-letter hook). What
``romeways run --health-port`` answers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._metrics import Aggregator

if TYPE_CHECKING:
    from ._app import App

REPORT_STALE_AFTER = 3.0
"""Seconds without a report after which a worker process counts as gone."""


def poll_limit(frequency: float) -> float:
    """How long a worker may go without a poll coming back: its connector waits up to
    ``frequency`` seconds per poll, plus slack for a slow broker."""
    return 3 * frequency + 5.0


def pid_alive(pid: int) -> bool:
    """False once a worker process has exited (a zombie not yet reaped counts as exited)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def expected_workers(app: App) -> dict[tuple[str, str], int]:
    """How many worker loops each (connector, queue) should have, as ``start()`` runs them."""
    expected: dict[tuple[str, str], int] = {}
    for route in app.routes:
        registration = app.connectors.get(route.connector_name)
        if registration is None:
            continue
        spawned = registration.spawn_process or app.workers > 1
        copies = app.workers if spawned else 1
        key = (route.connector_name, route.queue_name)
        expected[key] = expected.get(key, 0) + copies
    return expected


def evaluate(
    aggregator: Aggregator, expected: dict[tuple[str, str], int], now: float
) -> tuple[bool, dict[str, Any]]:
    """(healthy, JSON body): per queue the live and expected workers, and what is wrong."""
    live: dict[tuple[str, str], int] = {}
    workers: list[dict[str, Any]] = []
    problems: list[str] = []
    for received, report in aggregator.latest.values():
        if not pid_alive(report.pid):
            continue  # its process ended; a restarted one reports anew
        age = now - received
        key = (report.connector, report.queue)
        polled = None if report.poll_age is None else report.poll_age + age
        fresh = age <= REPORT_STALE_AFTER
        polling = polled is not None and polled <= poll_limit(report.frequency)
        stuck = report.stuck
        ok = fresh and (polling or report.inflight > 0) and not stuck
        workers.append(
            {
                "connector": report.connector,
                "queue": report.queue,
                "pid": report.pid,
                "alive": ok,
                "last_report_seconds": round(age, 3),
                "last_poll_seconds": None if polled is None else round(polled, 3),
                "inflight": report.inflight,
                "stuck": stuck,
            }
        )
        if ok:
            live[key] = live.get(key, 0) + 1
        elif fresh and stuck:
            problems.append(
                f"worker of queue {report.queue!r} (connector {report.connector!r}, pid "
                f"{report.pid}) is stuck: {stuck}"
            )
        elif fresh:
            problems.append(
                f"worker of queue {report.queue!r} (connector {report.connector!r}, pid "
                f"{report.pid}) has not polled "
                + ("yet" if polled is None else f"for {polled:.1f}s")
            )
    for (connector, queue), want in sorted(expected.items()):
        have = live.get((connector, queue), 0)
        if have < want:
            problems.append(
                f"queue {queue!r} (connector {connector!r}): {have} of {want} worker(s) alive"
            )
    healthy = not problems
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unhealthy",
        "problems": problems,
        "workers": sorted(workers, key=lambda w: (w["connector"], w["queue"], w["pid"])),
    }
    return healthy, body
