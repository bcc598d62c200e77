"""Stop signals on real processes (#14-#16): a hook that hangs in-process, several Apps in one
event loop, and a worker process whose parent is gone while its handler swallows cancellation
(or whose PR_SET_PDEATHSIG was reset).

Every scenario is a real process tree in its own session; each test stops what is left by PID.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .procs import Scenario, wait_gone

pytestmark = pytest.mark.timeout(60)


def _exit_after(app: Scenario, signum: int, within: float) -> tuple[int, float]:
    """Send ``signum`` to the app's parent; its exit code and how long the exit took."""
    sent = app.signal(signum)
    code = app.wait_exit(within)
    return code, time.time() - sent


def test_sigterm_stops_an_app_whose_startup_hook_hangs_in_process(tmp_path: Path) -> None:
    """#14: a start-up hook that never returns, in-process (spawn_process=False). SIGTERM cancels
    it, names it in the log, and start() returns: exit 0 at once, nothing consumed, no shutdown
    hook run (start-up did not complete). Before: SIGTERM was ignored until the hook returned."""
    with Scenario(tmp_path, "lifeapp", "--hang-startup") as app:
        app.wait_for("the hook hanging", lambda lg: "app0" in lg.ids("hanging"), 15)
        code, took = _exit_after(app, signal.SIGTERM, 5.0)
        assert code == 0, app.tail()
        assert took < 2.0
        log = app.log()
        assert "stop requested while start-up hook" in log and "hang_at_startup" in log
        assert app.ledger.records("done") == [] and app.ledger.records("down") == []


def test_shutdown_hook_that_hangs_is_cut_at_the_shutdown_deadline(tmp_path: Path) -> None:
    """#14: a shutdown hook that never returns, in-process: it gets what is left of the shutdown
    timeout (1 s here), is cancelled and named in the log with the hooks it left out; the
    process exits 0 within the timeout + 1 s. Before: the process never exited."""
    with Scenario(tmp_path, "lifeapp", "--hang-shutdown", "--shutdown-timeout", "1") as app:
        app.wait_for("the message handled", lambda lg: "app0-msg" in lg.ids("done"), 15)
        code, took = _exit_after(app, signal.SIGTERM, 6.0)
        assert code == 0, app.tail()
        assert 0.9 < took < 2.0
        log = app.log()
        assert "hang_at_shutdown did not finish within" in log
        assert "shutdown hooks skipped: " in log and ".down" in log
        assert app.ledger.ids("hanging") == {"app0": 1}


@pytest.mark.parametrize(
    ("signame", "apps", "stop_first"),
    [("SIGTERM", 2, False), ("SIGHUP", 2, False), ("SIGTERM", 3, True)],
    ids=["sigterm-2-apps", "sighup-2-apps", "sigterm-after-one-of-3-stopped"],
)
def test_one_stop_signal_stops_every_app_in_the_loop(
    tmp_path: Path, signame: str, apps: int, stop_first: bool
) -> None:
    """#15: Apps gathered in one event loop share the stop signals: one SIGTERM (or SIGHUP) stops
    them all gracefully (each ran its shutdown hook), also after one of them stopped by itself.
    Before: the last App's handler replaced the others' (only it stopped, the parent never
    exited), and once one App stopped, SIGTERM killed the process (exit -15)."""
    options = ["--apps", str(apps), *(["--stop-first"] if stop_first else [])]
    with Scenario(tmp_path, "lifeapp", *options) as app:
        names = {f"app{i}" for i in range(apps)}
        messages = {f"{n}-msg" for n in names}
        app.wait_for("every message handled", lambda lg: set(lg.ids("done")) >= messages, 15)
        if stop_first:
            app.wait_for("app0 stopped by itself", lambda lg: "app0" in lg.ids("down"), 5)
            time.sleep(0.2)
        code, took = _exit_after(app, getattr(signal, signame), 8.0)
        assert code == 0, app.tail()
        assert took < 3.0
        assert set(app.ledger.ids("down")) == names
        assert f"received {signame}: stopping gracefully" in app.log()


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGHUP"])
def test_worker_whose_handler_swallows_cancellation_ends_when_its_parent_goes(
    tmp_path: Path, signame: str
) -> None:
    """#16: the parent SIGKILLed (or SIGHUPed) while a worker's handler swallows every
    cancellation. SIGKILL: the kernel's PR_SET_PDEATHSIG SIGTERM starts a graceful stop that
    never ends; the worker exits hard (code 71) shutdown_timeout + 3 s later. SIGHUP: a graceful
    stop of the parent, which SIGKILLs the stuck worker after shutdown_timeout + 2 s and exits 0.
    Before: SIGHUP killed the parent at once, and either way the worker was orphaned for good."""
    options = ["--count", "3", "--stubborn", "--shutdown-timeout", "1"]
    with Scenario(tmp_path, "memapp", *options) as app:
        app.wait_for("the stubborn handler running", lambda lg: "g-000000" in lg.ids("start"), 15)
        workers = app.ledger.pids("start")
        sent = app.signal(getattr(signal, signame))
        code = app.wait_exit(8.0)
        left = wait_gone(workers, 1.0 + 3.0 + 3.0)
        took = time.time() - sent
        assert left == [], f"worker processes outlived their parent: {left}\n{app.tail()}"
        assert app.survivors() == []
        log = app.log()
        if signame == "SIGKILL":
            assert code == -signal.SIGKILL
            assert "exiting hard with code 71" in log
            assert 1.0 + 3.0 - 0.2 < took < 1.0 + 3.0 + 2.0
        else:
            assert code == 0, app.tail()
            assert "received SIGHUP: stopping gracefully" in log
            assert "did not stop in time; killing it" in log
        assert "g-000000" not in app.ledger.ids("ack")


def test_worker_without_pdeathsig_notices_its_parent_is_gone(tmp_path: Path) -> None:
    """#16: a worker whose PR_SET_PDEATHSIG was reset (as on platforms without it) checks every
    second that its parent lives: after a SIGKILL of the parent it logs that and stops gracefully
    within about 1 s. Before: it stayed, orphaned, for good."""
    with Scenario(tmp_path, "memapp", "--count", "3", "--no-pdeathsig") as app:
        app.wait_for("3 handled", lambda lg: len(lg.ids("done")) >= 3, 15)
        assert app.ledger.ids("no-pdeathsig") == {"worker": 1}
        (worker,) = app.ledger.pids("done")
        parent = app.pid
        sent = app.signal(signal.SIGKILL)
        app.wait_exit(5.0)
        left = wait_gone([worker], 5.0)
        took = time.time() - sent
        assert left == [], f"the worker outlived its parent:\n{app.tail()}"
        assert took < 3.0
        log = app.log()
        assert f"worker process {worker} of connector 'mem': its parent process {parent}" in log
        assert "exiting hard" not in log
