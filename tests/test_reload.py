"""``romeways run --reload``: real reloader processes over a memory-connector app in a temporary
directory; its hooks and handler append to a log file, which shows which code ran when."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from romeways._cli import main
from romeways._reload import child_argv

ROOT = Path(__file__).resolve().parent.parent

APP = """\
import multiprocessing
import os
from pathlib import Path

import romeways

VERSION = "{version}"
LOG = Path(os.environ["RELOAD_LOG"])
queue: "multiprocessing.Queue[bytes]" = multiprocessing.Queue()
app = romeways.App(shutdown_timeout=2)
config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.05)


def note(line: str) -> None:
    with LOG.open("a") as log:
        log.write(line + "\\n")


@app.on_startup
async def started() -> None:
    note(f"start {{VERSION}}")
    queue.put(VERSION.encode())


@app.on_shutdown
async def stopped() -> None:
    note(f"shutdown {{VERSION}}")


@app.queue_consumer(queue_name="q", config=config)
async def handle(message: romeways.Message[str]) -> None:
    note(f"handled {{message.payload}} by {{VERSION}}")


app.connector_register(
    connector=romeways.MemoryQueueConnector,
    config=romeways.MemoryConnectorConfig(connector_name="mem"),
)
"""


class Reloader:
    """A ``romeways run app:app --reload`` process in ``directory``; its stderr is collected."""

    def __init__(self, directory: Path, target: str = "app:app") -> None:
        self.directory = directory
        self.log = directory / "events.log"
        self.log.touch()
        self.out = directory / "stdout.txt"
        # Same-size edits within one second would otherwise leave a stale .pyc in use.
        env = {**os.environ, "RELOAD_LOG": str(self.log), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "romeways", "run", target, "--reload"]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--reload-dir", str(directory), "--log-level", "INFO"],
                cwd=directory,
                env=env,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def events(self) -> list[str]:
        return self.log.read_text().splitlines()

    def child_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"started the app in process (\d+)", self.stderr)]

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, f"the reloader exited: {self.stderr}"
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout}s; events {self.events()}\n{self.stderr}")
            time.sleep(0.05)

    def wait_event(self, event: str) -> None:
        self.wait_for(lambda: event in self.events(), repr(event))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def reloader(tmp_path: Path) -> Iterator[Callable[..., Reloader]]:
    started: list[Reloader] = []

    def start(target: str = "app:app") -> Reloader:
        started.append(Reloader(tmp_path, target))
        return started[-1]

    yield start
    for run in started:
        pids = run.child_pids() if run.proc.poll() is None else []
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for a reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def write_app(directory: Path, version: str) -> None:
    (directory / "app.py").write_text(APP.format(version=version))


def test_an_edit_restarts_the_app_on_the_new_code_after_the_old_runs_shutdown_hook(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    write_app(tmp_path, "v1")
    run = reloader()
    run.wait_event("handled v1 by v1")
    # Not watched: a file in .venv, and a file that is not Python.
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    write_app(tmp_path, "v2")
    run.wait_event("handled v2 by v2")
    assert run.events() == [
        "start v1",
        "handled v1 by v1",
        "shutdown v1",
        "start v2",
        "handled v2 by v2",
    ]
    changed = [line for line in run.lines if "reload: changed:" in line]
    assert len(changed) == 1 and "changed: app.py; restarting" in changed[0], run.stderr
    first, second = run.child_pids()
    assert f"the app (process {first}) stopped (exit code 0)" in run.stderr
    assert run.stop() == 0, run.stderr
    assert not _alive(first) and not _alive(second)


def test_a_syntax_error_is_logged_and_the_next_fix_restarts_the_app(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    write_app(tmp_path, "v1")
    run = reloader()
    run.wait_event("handled v1 by v1")
    (tmp_path / "app.py").write_text("def broken(:\n")
    run.wait_for(lambda: "exited by itself (exit code 1)" in run.stderr, "failed start logged")
    assert "SyntaxError" in run.stderr
    assert run.proc.poll() is None  # the reloader waits for the fix
    write_app(tmp_path, "v3")
    run.wait_event("handled v3 by v3")
    events = ["start v1", "handled v1 by v1", "shutdown v1", "start v3", "handled v3 by v3"]
    assert run.events() == events
    assert len(run.child_pids()) == 3
    assert run.stop() == 0, run.stderr


def test_sigterm_to_the_reloader_stops_the_app_gracefully_and_leaves_no_orphan(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    write_app(tmp_path, "v1")
    run = reloader()
    run.wait_event("handled v1 by v1")
    (child,) = run.child_pids()
    assert _alive(child)
    began = time.monotonic()
    assert run.stop() == 0, run.stderr
    took = time.monotonic() - began
    assert run.events()[-1] == "shutdown v1"
    assert f"the app (process {child}) stopped (exit code 0)" in run.stderr
    assert not _alive(child)
    assert took < 2 + 5, took  # the app's shutdown_timeout + the kill margin: never needed


def test_a_child_that_does_not_stop_is_killed_after_its_shutdown_timeout_and_the_margin(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    """A start-up hook that blocks the event loop: SIGTERM is never acted on, so the reloader
    SIGKILLs the run once shutdown_timeout (2 s, reported by the child) + 5 s have passed."""
    stuck = APP.format(version="v1").replace(
        "    queue.put(VERSION.encode())", "    import time\n\n    time.sleep(60)"
    )
    (tmp_path / "app.py").write_text(stuck)
    run = reloader()
    run.wait_event("start v1")
    edited = time.monotonic()
    write_app(tmp_path, "v2")
    run.wait_event("handled v2 by v2")
    took = time.monotonic() - edited
    assert 7 <= took < 7 + 10, took
    first, _ = run.child_pids()
    assert f"the app (process {first}) did not stop within 7.0s" in run.stderr, run.stderr
    assert f"the app (process {first}) stopped (killed by SIGKILL)" in run.stderr
    assert run.events() == ["start v1", "start v2", "handled v2 by v2"]
    assert run.stop() == 0, run.stderr


def test_a_killed_reloader_takes_its_child_with_it(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    write_app(tmp_path, "v1")
    run = reloader()
    run.wait_event("handled v1 by v1")
    (child,) = run.child_pids()
    run.proc.kill()
    run.proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert run.events()[-1] == "shutdown v1"  # stopped gracefully, by its parent-death signal


def test_the_docs_example_restarts_on_an_edit(
    tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    """docs/reload.md's "Try it": its program, run with --reload, then edited as it says."""
    page = (ROOT / "docs" / "reload.md").read_text()
    (source,) = re.findall(r"^```python\n(.*?)^```$", page, re.M | re.S)
    (tmp_path / "consumers.py").write_text(source)
    run = reloader("consumers:app")

    def printed() -> list[str]:
        return run.out.read_text().splitlines()

    run.wait_for(lambda: printed() == ["handled hello"], "handled hello")
    (tmp_path / "consumers.py").write_text(source.replace('f"handled', 'f"greeted'))
    run.wait_for(lambda: len(printed()) == 3, "the restart")
    assert printed() == ["handled hello", "shutdown hook ran", "greeted hello"]
    assert run.stop() == 0, run.stderr
    assert printed()[-1] == "shutdown hook ran"


def test_without_watchfiles_reload_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles -> ImportError
    assert main(["run", "anything:app", "--reload"]) == 2
    err = capsys.readouterr().err
    assert "--reload needs the watchfiles package" in err
    assert "pip install 'romeways[reload]'" in err


def test_reload_dir_must_exist_and_needs_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent"
    assert main(["run", "x:app", "--reload", "--reload-dir", str(missing)]) == 2
    assert f"--reload-dir {missing}: no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["run", "x:app", "--reload-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "--reload-dir is only for --reload" in capsys.readouterr().err


def test_the_child_gets_every_other_option_and_no_reload_option() -> None:
    argv = [
        "run",
        "app:app",
        "--reload",
        "--reload-dir",
        "src",
        "--workers",
        "2",
        "--reload-dir=lib",
        "--reload-d",
        "more",
        "--log-format",
        "json",
        "--shutdown-timeout=4",
    ]
    assert child_argv(argv) == [
        "run",
        "app:app",
        "--workers",
        "2",
        "--log-format",
        "json",
        "--shutdown-timeout=4",
    ]
    assert child_argv(["run", "--", "--reload"]) == ["run", "--", "--reload"]


def test_the_console_script_help_names_the_reload_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "romeways", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "--reload " in result.stdout and "--reload-dir DIR" in result.stdout, result.stdout
