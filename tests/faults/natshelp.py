"""NATS helpers for the NATS tests and fault tests: the shared JetStream server (127.0.0.1:4222,
or ``ROMEWAYS_TEST_NATS_URL``), private ``nats-server -js`` processes on free ports with a store
directory of their own (so a restart keeps the streams), unique stream names, publishing ids,
and reading a consumer's state.

Tests on the shared server name every stream and durable uniquely (``unique_name``) and delete
the streams they made (``delete_streams``); the shared server itself is never restarted or
reconfigured. Faults that stop a server use a ``PrivateServer`` and stop it by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.js.errors
import pytest
from broker import free_port, unique_name, wait_for_port
from nats.aio.client import Client
from nats.js.api import ConsumerInfo, StreamInfo
from tlscerts import make_pki

from .ledger import Ledger, payload

ENV_VAR = "ROMEWAYS_TEST_NATS_URL"
SHARED_URL = "nats://127.0.0.1:4222"
HOST = "127.0.0.1"
T = TypeVar("T")

__all__ = [
    "ENV_VAR",
    "PrivateServer",
    "consumer_info",
    "delete_streams",
    "free_port",
    "publish_ids",
    "run",
    "shared_url",
    "stream_info",
    "unique_name",
]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _reachable(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or 4222), timeout):
            return True
    except OSError:
        return False


def shared_url() -> str | None:
    """The JetStream server the tests share: ``ROMEWAYS_TEST_NATS_URL`` when set, else the
    machine's 127.0.0.1:4222; None when that one is not running (the caller starts its own)."""
    url = os.environ.get(ENV_VAR, "").strip()
    if url:
        return url
    return SHARED_URL if _reachable(SHARED_URL) else None


def _die_with_parent() -> None:
    """In the server's child before exec: SIGKILL it when the test process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class PrivateServer:
    """A ``nats-server -js`` of this test on 127.0.0.1:``port`` with its store in
    ``directory``: ``stop()``/``kill()`` it by its PID and ``start()`` it again on the same port
    and store (a server restart that keeps the streams). ``args``: more server options (login,
    TLS)."""

    def __init__(
        self, directory: Path, *, port: int | None = None, args: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.args = list(args)
        self.store = directory / "jetstream"
        self.log_path = directory / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 15.0) -> PrivateServer:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not installed (it is on the project's machines)")
        self.store.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "-a",
            HOST,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            "-l",
            str(self.log_path),
            *self.args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=(
                _die_with_parent if threading.current_thread() is threading.main_thread() else None
            ),
        )
        self.starts += 1
        try:
            wait_for_port(HOST, self.port, timeout)
            self._wait_for_jetstream(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_for_jetstream(self, timeout: float) -> None:
        """JetStream answers only once it recovered its store: wait for that."""
        deadline = time.monotonic() + timeout
        while "Server is ready" not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nats-server on port {self.port} never got ready:\n{self.log()}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server (by PID) and wait for it."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server (by PID): lost without warning."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay away ``down_for`` seconds, start again on the same port and store."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> PrivateServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


async def _connect(url: str, **options: Any) -> Client:
    return await nats.connect(url, allow_reconnect=False, connect_timeout=5, **options)


async def delete_streams(url: str, names: Iterable[str], **options: Any) -> None:
    """Delete these streams (and so their consumers); those already gone are fine."""
    wanted = list(names)
    if not wanted:
        return
    client = await _connect(url, **options)
    try:
        js = client.jetstream()
        for name in wanted:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


async def publish_ids(
    url: str,
    subject: str,
    ids: Sequence[str],
    *,
    ledger: Ledger | None = None,
    values: Sequence[bytes] | None = None,
    rate: float = 0.0,
    **options: Any,
) -> None:
    """Publish one message per id (its ``payload()``, or ``values[i]``) to JetStream, each
    confirmed by a PubAck; recorded as ``produced`` in ``ledger``."""
    client = await _connect(url, **options)
    try:
        js = client.jetstream()
        for i, message_id in enumerate(ids):
            value = values[i] if values is not None else payload(message_id)
            await js.publish(subject, value)
            if ledger is not None:
                ledger.write("produced", message_id)
            if rate:
                await asyncio.sleep(1.0 / rate)
    finally:
        await client.close()


async def consumer_info(url: str, stream: str, durable: str, **options: Any) -> ConsumerInfo:
    client = await _connect(url, **options)
    try:
        info: ConsumerInfo = await client.jetstream().consumer_info(stream, durable)
        return info
    finally:
        await client.close()


async def stream_info(url: str, stream: str, **options: Any) -> StreamInfo:
    client = await _connect(url, **options)
    try:
        info: StreamInfo = await client.jetstream().stream_info(stream)
        return info
    finally:
        await client.close()


def make_certs(directory: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate it signed (PEM
    files, see ``tlscerts``): ``ca``, ``server_cert``, ``server_key``, ``client_cert``,
    ``client_key``."""
    pki = make_pki(directory)
    return {
        "ca": pki.ca,
        "server_cert": pki.server_cert,
        "server_key": pki.server_key,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }


class Streams:
    """Unique stream names for one test on a server, deleted when the test ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def new(self, prefix: str) -> str:
        name = unique_name(prefix).replace("-", "_")
        self.made.append(name)
        return name

    def delete(self) -> None:
        run(delete_streams(self.url, self.made))


@pytest.fixture(scope="session")
def nats_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the shared JetStream server (a private one when it is not running)."""
    url = shared_url()
    if url is not None:
        yield url
        return
    server = PrivateServer(tmp_path_factory.mktemp("nats-faults")).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def streams(nats_shared: str) -> Iterator[Streams]:
    """``streams.new(prefix)``: a unique stream name on the shared server, deleted after."""
    made = Streams(nats_shared)
    try:
        yield made
    finally:
        made.delete()


def fully_acked(url: str, stream: str, durable: str) -> bool:
    """The consumer has nothing left: every message delivered and acked (or terminated)."""
    info = run(consumer_info(url, stream, durable))
    return info.num_pending == 0 and info.num_ack_pending == 0


async def add_stream(url: str, stream: str, subject: str, **options: Any) -> None:
    """Create a file-stored stream of ``subject`` (as the connector would with its defaults)."""
    client = await _connect(url, **options)
    try:
        await client.jetstream().add_stream(name=stream, subjects=[subject])
    finally:
        await client.close()
