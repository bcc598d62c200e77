"""Redis helpers of the Redis tests: the server the suite uses (the machine's shared Redis, or
``ROMEWAYS_TEST_REDIS_URL``), private ``redis-server`` processes for faults that stop or
reconfigure a server (a free 127.0.0.1 port, a temp dir, append-only file, TLS, ACL users;
stopped by PID), certificates made with the ``openssl`` command line, and stream helpers."""

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
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from tlscerts import make_pki

ENV_VAR = "ROMEWAYS_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
HOST = "127.0.0.1"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def unique(prefix: str) -> str:
    """A stream, group or consumer name no other test uses."""
    return f"rw-test-{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on {HOST}:{port}") from None
            time.sleep(0.02)


def shared_url() -> str:
    """The Redis the suite uses: ``ROMEWAYS_TEST_REDIS_URL``, or the machine's shared one."""
    return os.environ.get(ENV_VAR, "").strip() or DEFAULT_URL


def client(url: str, **options: Any) -> aioredis.Redis:
    """A plain redis-py client for the tests' own checks (not the connector's)."""
    return aioredis.Redis.from_url(url, **options)


async def delete_streams(url: str, *streams: str) -> None:
    """Delete the streams a test made (never anything else)."""
    if not streams:
        return
    async with client(url) as redis:
        await redis.delete(*streams)


async def add_entries(
    url: str, stream: str, values: Sequence[bytes], *, field: bytes = b"data"
) -> list[bytes]:
    """XADD one entry per value (in one pipeline); their ids."""
    async with client(url) as redis:
        pipe = redis.pipeline(transaction=False)
        for value in values:
            pipe.xadd(stream, {field: value})
        ids: list[bytes] = await pipe.execute()
        return ids


async def pending(url: str, stream: str, group: str) -> list[dict[str, Any]]:
    """The group's pending entries (XPENDING ... - + 10000)."""
    async with client(url) as redis:
        try:
            found: list[dict[str, Any]] = await redis.xpending_range(
                stream, group, min="-", max="+", count=10_000
            )
        except Exception:
            return []
        return found


async def consumers(url: str, stream: str, group: str) -> dict[str, int]:
    """The group's consumers and how many entries are pending at each."""
    async with client(url) as redis:
        found = await redis.xinfo_consumers(stream, group)
        return {c["name"].decode(): int(c["pending"]) for c in found}


def _die_with_parent() -> None:
    """In the server's child before exec: SIGKILL it when the test process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class TlsFiles:
    """A CA and the server and client certificates it signed (PEM), plus a CA that signed
    nothing here (to trust the wrong one) and the client key encrypted with ``key_password``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    key_password: str
    other_ca: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate (see
    ``tlscerts``)."""
    pki = make_pki(directory)
    return TlsFiles(
        ca=pki.ca,
        server_cert=pki.server_cert,
        server_key=pki.server_key,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        client_key_encrypted=pki.client_key_encrypted,
        key_password=pki.key_password,
        other_ca=pki.other_ca,
    )


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 in ``directory``: append-only file on
    (``appendfsync always``, so a SIGKILL loses nothing acknowledged), no RDB snapshots; with
    ``tls`` it listens for TLS only (client certificates required); ``users`` maps ACL user
    names to passwords (the default user is then off). Started by ``start()``, stopped by PID."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.tls = tls
        self.users = users or {}
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{HOST}:{self.port}/0"

    def _config(self) -> str:
        lines = [
            f"bind {HOST}",
            f"dir {self.directory}",
            "appendonly yes",
            "appendfsync always",
            'save ""',
            "daemonize no",
            "loglevel warning",
            f"logfile {self.directory / 'redis.log'}",
        ]
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients yes",
            ]
        if self.users:
            lines.append("user default off")
            lines += [f"user {name} on >{pw} ~* &* +@all" for name, pw in self.users.items()]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> RedisServer:
        config = self.directory / "redis.conf"
        config.write_text(self._config())
        self.proc = subprocess.Popen(
            ["redis-server", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=(
                _die_with_parent if threading.current_thread() is threading.main_thread() else None
            ),
        )
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def kill(self) -> None:
        """SIGKILL the server (by its PID) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (the server writes its files and exits), SIGKILL after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()
