"""Kafka helpers of the fault tests: produce id-carrying messages across partitions, read end and
committed offsets, and a blackhole TCP proxy (a network cut that drops traffic silently)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from broker import HOST, LoopbackServer, committed_offsets, create_topic

from .ledger import Ledger, payload

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def produce_ids(
    bootstrap: str,
    topic: str,
    ids: Sequence[str],
    partitions: int = 1,
    *,
    ledger: Ledger | None = None,
    rate: float = 0.0,
    values: Sequence[bytes | None] | None = None,
    partition: int | None = None,
    security: dict[str, Any] | None = None,
) -> None:
    """Produce one message per id (its ``payload()``, or ``values[i]``), round-robin over the
    partitions, every one confirmed by the broker (acks=all); ``rate`` messages per second at
    most when given; all to ``partition`` if given. Each confirmed id is recorded as
    ``produced`` in ``ledger``. ``security``: aiokafka's login options, if any."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2**21, **(security or {})
    )
    await producer.start()
    try:
        for i, message_id in enumerate(ids):
            value = values[i] if values is not None else payload(message_id)
            where = i % partitions if partition is None else partition
            await producer.send_and_wait(topic, value, key=message_id.encode(), partition=where)
            if ledger is not None:
                ledger.write("produced", message_id, extra=str(where))
            if rate:
                await asyncio.sleep(1.0 / rate)
    finally:
        await producer.stop()


async def end_offsets(
    bootstrap: str, topic: str, partitions: int, *, security: dict[str, Any] | None = None
) -> dict[int, int]:
    """The end offset (next offset to be written) of each partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(security or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def fully_committed(
    bootstrap: str,
    topic: str,
    group: str,
    partitions: int,
    *,
    security: dict[str, Any] | None = None,
) -> bool:
    """Every partition's committed offset of ``group`` is its end offset."""
    ends = run(end_offsets(bootstrap, topic, partitions, security=security))
    committed = run(committed_offsets(bootstrap, group, topic, partitions, security=security))
    return all(committed.get(p) == end for p, end in ends.items())


def new_topic(
    bootstrap: str, topic: str, partitions: int, *, security: dict[str, Any] | None = None
) -> None:
    run(create_topic(bootstrap, topic, partitions, security=security))


def commits_never_go_back(ledger: Ledger) -> list[str]:
    """Problems with the commits the broker accepted: a partition whose committed offset went
    backwards (a stale commit after it moved), or a commit of a partition its committer did not
    own. Empty when there are none."""
    problems = []
    last: dict[str, int] = {}
    for record in ledger.records("commit"):
        if record.extra == "STALE":
            problems.append(f"pid {record.pid} committed {record.id}@{record.attempt} unassigned")
        if record.attempt < last.get(record.id, -1):
            problems.append(
                f"{record.id} went back from {last[record.id]} to {record.attempt} "
                f"(pid {record.pid})"
            )
        last[record.id] = max(record.attempt, last.get(record.id, -1))
    return problems


class BlackholeProxy(LoopbackServer):
    """A TCP proxy on 127.0.0.1:``listen_port`` in front of ``target_port``, run by its own event
    loop in a thread. ``cut()`` makes it drop every byte both ways, on open and new connections
    alike, without closing anything (packets lost, not refused); ``restore()`` resets the
    connections that lived through the cut (their streams lost data) and forwards again."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.target_port = target_port
        self.cut_now = False
        self.dropped = 0
        self._tainted: set[asyncio.StreamWriter] = set()
        super().__init__(listen_port, "blackhole proxy")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._conns.update(pair)
        if self.cut_now:
            self._tainted.update(pair)
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in pair:
            w.transport.abort()
            self._conns.discard(w)
            self._tainted.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.cut_now:
                    self.dropped += len(data)
                    self._tainted.add(writer)
                    continue
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        def start_cut() -> None:
            self.cut_now = True
            self._tainted.update(self._conns)

        self._call(start_cut)

    def restore(self) -> None:
        def end_cut() -> None:
            for w in list(self._tainted):
                w.transport.abort()
            self._tainted.clear()
            self.cut_now = False

        self._call(end_cut)


def scenario_args(bootstrap: str, topic: str, group: str, **options: object) -> list[str]:
    """Command-line arguments of ``faults.kafkaapp`` (``True`` options become bare flags)."""
    args = ["--bootstrap", bootstrap, "--topic", topic, "--group", group]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return args


def per_partition_duplicates(ledger: Ledger, partitions: int, ids: Sequence[str]) -> dict[int, int]:
    """Extra handlings per partition, for ids produced round-robin in ``ids`` order."""
    where = {message_id: i % partitions for i, message_id in enumerate(ids)}
    extra = {p: 0 for p in range(partitions)}
    for message_id, count in ledger.ids("done").items():
        if message_id in where and count > 1:
            extra[where[message_id]] += count - 1
    return extra
