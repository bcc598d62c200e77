"""RabbitMQ helpers of the tests (``tests/rabbitmq`` and the RabbitMQ fault tests): a vhost of
the test session's own on the machine's shared broker, queues, publishing ids, reading what a
queue holds, and closing this test's own connections with ``rabbitmqctl``.

The broker is the shared RabbitMQ at 127.0.0.1:5672 (guest/guest): every test session adds a
vhost of its own (``rabbitmqctl add_vhost`` and ``set_permissions`` for the URL's user) and
deletes it at the end, so no test touches another vhost. ``ROMEWAYS_TEST_RABBITMQ_URL`` points
the tests at another broker instead: they then use that URL's vhost as it is, with unique queue
names they delete afterwards. ``ROMEWAYS_TEST_RABBITMQCTL`` is the command that runs
``rabbitmqctl`` against that broker (e.g. ``docker exec rabbit rabbitmqctl``); the tests that
need it (closing a connection from the server side, making a vhost) are skipped without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq
from aiormq import spec
from yarl import URL

from .ledger import Ledger, payload

URL_ENV = "ROMEWAYS_TEST_RABBITMQ_URL"
CTL_ENV = "ROMEWAYS_TEST_RABBITMQCTL"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ctl_command() -> list[str] | None:
    """The rabbitmqctl command for the broker under test, or None when there is none."""
    given = os.environ.get(CTL_ENV, "").strip()
    if given:
        return shlex.split(given)
    if os.environ.get(URL_ENV, "").strip():
        return None  # another broker: the local rabbitmqctl does not reach it
    found = shutil.which("rabbitmqctl")
    return [found] if found else None


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl args`` and return its output (quiet mode); raises on failure."""
    command = ctl_command()
    if command is None:
        raise RuntimeError(f"no rabbitmqctl for the broker under test (set {CTL_ENV})")
    result = subprocess.run(
        [*command, "-q", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


class Vhost:
    """The broker URL a test session uses: a new vhost on the shared broker (removed by
    ``close()``), or the URL of ``ROMEWAYS_TEST_RABBITMQ_URL`` as it is."""

    def __init__(self) -> None:
        given = os.environ.get(URL_ENV, "").strip()
        self.name: str | None = None
        if given:
            self.url = given
            return
        base = URL(DEFAULT_URL)
        self.name = f"romeways-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", self.name)
        try:
            rabbitmqctl("set_permissions", "-p", self.name, base.user or "guest", ".*", ".*", ".*")
        except BaseException:
            self.close()
            raise
        self.url = str(base.with_path("/" + self.name, encoded=False))

    def close(self) -> None:
        if self.name is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                rabbitmqctl("delete_vhost", self.name)
            self.name = None


def unique_queue(prefix: str) -> str:
    """A queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def channel(url: str, *, confirms: bool = True) -> Any:
    """A connection and one channel (publisher confirms, returns raise), closed at the end."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "rw-test"})
    try:
        yield await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    finally:
        await connection.close()


async def declare(
    url: str,
    queue: str,
    *,
    queue_type: str = "quorum",
    arguments: dict[str, Any] | None = None,
) -> None:
    """Declare ``queue`` durable, as the connector does."""
    async with channel(url) as ch:
        await ch.declare_queue(
            queue, durable=True, arguments={"x-queue-type": queue_type, **(arguments or {})}
        )


async def delete_queue(url: str, queue: str) -> None:
    with contextlib.suppress(aiormq.exceptions.AMQPError, OSError):
        async with channel(url) as ch:
            await ch.queue_delete(queue)


async def delete_exchange(url: str, exchange: str) -> None:
    with contextlib.suppress(aiormq.exceptions.AMQPError, OSError):
        async with channel(url) as ch:
            await ch.exchange_delete(exchange)


async def publish(
    url: str,
    queue: str,
    bodies: Sequence[bytes],
    *,
    headers: dict[str, Any] | None = None,
    queue_type: str = "quorum",
    declare_first: bool = True,
) -> None:
    """Declare ``queue`` as the connector does (unless ``declare_first`` is False), then
    publish each body to it (default exchange, persistent, mandatory), each one confirmed."""
    if declare_first:
        await declare(url, queue, queue_type=queue_type)
    async with channel(url) as ch:
        for body in bodies:
            await ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=2, headers=headers),
                routing_key=queue,
                mandatory=True,
            )


async def publish_ids(
    url: str,
    queue: str,
    ids: Sequence[str],
    *,
    ledger: Ledger | None = None,
    queue_type: str = "quorum",
) -> None:
    """Declare ``queue`` and publish the ``payload()`` of each id to it; confirmed ids are
    recorded as ``produced`` in ``ledger``."""
    await declare(url, queue, queue_type=queue_type)
    async with channel(url) as ch:
        for message_id in ids:
            await ch.default_exchange.publish(
                aio_pika.Message(payload(message_id), delivery_mode=2),
                routing_key=queue,
                mandatory=True,
            )
            if ledger is not None:
                ledger.write("produced", message_id)


async def ready_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (not counting those delivered and unacknowledged)."""
    async with channel(url) as ch:
        declared = await ch.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def take_all(url: str, queue: str, *, idle: float = 0.5) -> list[aiormq.abc.DeliveredMessage]:
    """Every message ``queue`` holds, in order (basic.get until empty for ``idle`` seconds),
    each acknowledged: what a consumer after the test would get."""
    taken: list[aiormq.abc.DeliveredMessage] = []
    async with channel(url, confirms=False) as ch:
        raw = await ch.get_underlay_channel()
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while loop.time() - quiet_since < idle:
            message = await raw.basic_get(queue)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                await asyncio.sleep(0.05)
                continue
            taken.append(message)
            await raw.basic_ack(message.delivery.delivery_tag)
            quiet_since = loop.time()
    return taken


def connection_pids(name_part: str) -> list[str]:
    """The broker's pids of the connections whose client-given name contains ``name_part``
    (``rabbitmqctl list_connections``): how a test finds its own connections."""
    out = rabbitmqctl("list_connections", "pid", "client_properties")
    pids = []
    for line in out.splitlines():
        pid, _, properties = line.partition("\t")
        found = re.search(r'\{"connection_name","((?:[^"\\]|\\.)*)"\}', properties)
        if found is not None and name_part in found.group(1):
            pids.append(pid.strip())
    return pids


def close_connections(name_part: str, reason: str = "closed by a romeways test") -> int:
    """Close, from the broker's side, the connections of this test (named with
    ``name_part``); how many there were."""
    pids = connection_pids(name_part)
    for pid in pids:
        rabbitmqctl("close_connection", pid, reason)
    return len(pids)
