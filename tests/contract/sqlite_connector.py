"""An SQLite-backed queue for romeways, written only against its public API: an example of a
third connector, with real acknowledgements.

Each message is a row. ``get_messages`` claims rows in id order (FIFO) for
``visibility_timeout`` seconds; ``ack`` deletes them; ``resend`` adds the envelope as a new row
(with the original's key and headers) and deletes the original in one transaction; ``close``
gives back the claims it did not ack. The optional capabilities: ``publish`` (a key and
headers), ``message_metadata`` (those, when the row was written, and its queue and row id) and
``consumer_lag`` (rows on the queue not claimed).
A row is deleted only after its message is finished, so a worker killed mid-chunk loses
nothing: its claims run out after ``visibility_timeout`` and the rows are delivered again
(at least once). Several processes may consume and produce on the same database file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import romeways
from romeways.connectors.support import DeliveryLedger

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS romeways_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    key BLOB,
    headers TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    claimed_by TEXT,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS romeways_messages_by_queue ON romeways_messages (queue, id);
"""


class SQLiteConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    """``path``: the database file, shared by every producer and consumer of its queues."""

    path: str


class SQLiteQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    """``visibility_timeout``: seconds a fetched message stays claimed before another consumer
    may take it (make it longer than handling a chunk takes); ``poll_interval``: seconds
    between looks at an empty queue while ``get_messages`` waits up to ``frequency``."""

    visibility_timeout: float = 30.0
    poll_interval: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.visibility_timeout > 0:
            raise ValueError(f"SQLiteQueueConfig.visibility_timeout={self.visibility_timeout!r}")
        if not self.poll_interval > 0:
            raise ValueError(f"SQLiteQueueConfig.poll_interval={self.poll_interval!r}")


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the schema in place."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db


def enqueue(path: str, queue_name: str, bodies: Iterable[bytes]) -> None:
    """Put messages on a queue from ordinary (synchronous) code."""
    db = connect(path)
    try:
        db.executemany(
            "INSERT INTO romeways_messages (queue, body) VALUES (?, ?)",
            [(queue_name, body) for body in bodies],
        )
    finally:
        db.close()


def rows(path: str, queue_name: str) -> list[tuple[bytes, bool]]:
    """The messages on a queue in order, each with whether it is claimed right now."""
    db = connect(path)
    try:
        found = db.execute(
            "SELECT body, claimed_until > ? FROM romeways_messages WHERE queue = ? ORDER BY id",
            (time.time(), queue_name),
        ).fetchall()
    finally:
        db.close()
    return [(bytes(body), bool(claimed)) for body, claimed in found]


class _Row(NamedTuple):
    """A claimed row: what ``resend``, ``ack`` and ``message_metadata`` need of it."""

    id: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    created: float


def _headers_of(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, bytes.fromhex(value)) for name, value in json.loads(text))


def _headers_text(headers: Sequence[tuple[str, bytes]]) -> str:
    return json.dumps([(name, value.hex()) for name, value in headers])


class SQLiteQueueConnector(romeways.AQueueConnector[SQLiteConnectorConfig, SQLiteQueueConfig]):
    """One queue of an SQLite database; blocking calls run on one thread of its own."""

    def __init__(
        self,
        *,
        connector_config: SQLiteConnectorConfig,
        queue_name: str,
        config: SQLiteQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._token = uuid.uuid4().hex  # names this instance's claims
        self._rows: DeliveryLedger[_Row] = DeliveryLedger()  # delivery -> row, until acked

    async def _call(self, func: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            await self.on_start()  # romeways.publish sends through an instance never started
        assert self._executor is not None and self._db is not None
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, db)

    async def on_start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{self.queue_name}")
        path = self.connector_config.path
        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect, path)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        deadline = time.monotonic() + self.config.frequency
        while True:
            claimed = await self._call(lambda db: self._claim(db, max_chunk_size))
            left = deadline - time.monotonic()
            if claimed or left <= 0:
                break
            await asyncio.sleep(min(self.config.poll_interval, left))
        self._rows.add_all(row for row, _ in claimed)
        return [body for _, body in claimed]

    def _claim(self, db: sqlite3.Connection, limit: int) -> list[tuple[_Row, bytes]]:
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute(
                "SELECT id, body, key, headers, created FROM romeways_messages "
                "WHERE queue = ? AND claimed_until < ? ORDER BY id LIMIT ?",
                (self.queue_name, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE romeways_messages SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                [(self._token, now + self.config.visibility_timeout, row[0]) for row in found],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [
            (_Row(row, None if key is None else bytes(key), _headers_of(headers), created), body)
            for row, body, key, headers, created in found
        ]

    async def send_messages(self, message: bytes) -> None:
        await self.publish(message)

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Add ``message`` with ``key`` and ``headers`` (``romeways.publish`` uses this)."""
        text = _headers_text(headers or ())
        await self._call(
            lambda db: db.execute(
                "INSERT INTO romeways_messages (queue, body, key, headers) VALUES (?, ?, ?, ?)",
                (self.queue_name, message, key, text),
            )
        )

    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        row = self._rows.get(delivery)
        if row is None:
            return None
        return romeways.MessageMetadata(
            key=row.key,
            headers=row.headers,
            timestamp=row.created,
            position=(("queue", self.queue_name), ("id", row.id)),
        )

    async def consumer_lag(self) -> Mapping[str, int]:
        """The rows of the queue no consumer has claimed."""
        (waiting,) = await self._call(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM romeways_messages WHERE queue = ? AND claimed_until < ?",
                (self.queue_name, time.time()),
            ).fetchone()
        )
        return {self.queue_name: int(waiting)}

    async def resend(self, delivery: int, message: bytes) -> None:
        row = self._rows.get(delivery)
        key, headers = (None, "[]") if row is None else (row.key, _headers_text(row.headers))

        def swap(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO romeways_messages (queue, body, key, headers) VALUES (?, ?, ?, ?)",
                    (self.queue_name, message, key, headers),
                )
                if row is not None:
                    db.execute("DELETE FROM romeways_messages WHERE id = ?", (row.id,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._call(swap)

    async def ack(self, deliveries: Sequence[int]) -> None:
        finished = [(row.id,) for row in self._rows.pop_all(deliveries)]
        if finished:
            await self._call(
                lambda db: db.executemany("DELETE FROM romeways_messages WHERE id = ?", finished)
            )

    async def close(self) -> None:
        """Give back the claims not acked, so the next consumer need not wait them out."""
        if self._db is not None and self._executor is not None:
            try:
                await self._call(
                    lambda db: db.execute(
                        "UPDATE romeways_messages SET claimed_by = NULL, claimed_until = 0 "
                        "WHERE claimed_by = ?",
                        (self._token,),
                    )
                )
                await self._call(lambda db: db.close())
            finally:
                self._executor.shutdown(wait=False)
                self._db = None
                self._executor = None
        self._rows.clear()
