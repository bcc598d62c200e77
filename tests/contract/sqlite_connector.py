"""An SQLite-backed queue for romeways, written only against its public API: an example of a
third connector, with real acknowledgements.

Each message is a row. ``get_messages`` claims rows in id order (FIFO) for
``visibility_timeout`` seconds; ``ack`` deletes them; ``resend`` adds the envelope as a new row
and deletes the original in one transaction; ``close`` gives back the claims it did not ack.
A row is deleted only after its message is finished, so a worker killed mid-chunk loses
nothing: its claims run out after ``visibility_timeout`` and the rows are delivered again
(at least once). Several processes may consume and produce on the same database file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import romeways

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS romeways_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
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
        self._rows: dict[int, int] = {}  # delivery number -> row id, until acked
        self._next_delivery = 0

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
        chunk: list[bytes] = []
        for row_id, body in claimed:
            self._rows[self._next_delivery] = row_id
            self._next_delivery += 1
            chunk.append(body)
        return chunk

    def _claim(self, db: sqlite3.Connection, limit: int) -> list[tuple[int, bytes]]:
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute(
                "SELECT id, body FROM romeways_messages WHERE queue = ? AND claimed_until < ? "
                "ORDER BY id LIMIT ?",
                (self.queue_name, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE romeways_messages SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                [(self._token, now + self.config.visibility_timeout, row) for row, _ in found],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [(row, bytes(body)) for row, body in found]

    async def send_messages(self, message: bytes) -> None:
        await self._call(
            lambda db: db.execute(
                "INSERT INTO romeways_messages (queue, body) VALUES (?, ?)",
                (self.queue_name, message),
            )
        )

    async def resend(self, delivery: int, message: bytes) -> None:
        row = self._rows.get(delivery)

        def swap(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO romeways_messages (queue, body) VALUES (?, ?)",
                    (self.queue_name, message),
                )
                db.execute("DELETE FROM romeways_messages WHERE id = ?", (row,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._call(swap)

    async def ack(self, deliveries: Sequence[int]) -> None:
        finished = [(self._rows.pop(d),) for d in deliveries if d in self._rows]
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
