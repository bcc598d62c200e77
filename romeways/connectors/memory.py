"""The memory connector: a ``multiprocessing.Queue`` shared by producers and a consumer.

At-most-once: a message is off the queue once fetched, so a worker killed before finishing it
loses it. Use it for development, tests and single-host pipelines; use Kafka when that matters.

A resend that finds a bounded queue (``Queue(maxsize)``) full is held by the connector and
handed out first by its next fetch: waiting for room would wait for this very worker, whose
fetching makes the room. On shutdown the worker puts held resends back (``return_held``).

A message published with a key or headers (``romeways.publish``) goes on the queue as a
``MemoryEnvelope`` (data, key, headers), which the consumer unpacks and tells through
``message_metadata``; without them it goes as plain bytes, as before.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_module
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.reduction import ForkingPickler
from typing import Any, cast

import msgspec

from .._config import GenericConnectorConfig, GenericQueueConfig, require
from .._connector import AQueueConnector, MessageMetadata
from .._private import QueuePipe, queue_pipe

logger = logging.getLogger("romeways")

_WAIT_SLICE = 0.25  # seconds; how soon close() ends an idle wait
_PUT_BACK_TIMEOUT = 1.0  # seconds a given-up fetch waits in all for room to put its messages back
_ROOM_POLL = 0.01  # seconds between tries to put a held resend back on a full queue


_PLAIN = MessageMetadata()  # what a message put on the queue without key or headers has


class MemoryEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A message put on the queue with a key or headers (picklable: module-level, for worker
    processes); a dedicated type, so no object a user puts on the queue is taken for one."""

    data: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class MemoryConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """The memory connector needs nothing but its name."""


class MemoryQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """A queue of the memory connector: ``queue`` is a ``multiprocessing.Queue`` of bytes (str is
    sent as UTF-8, other objects as JSON)."""

    queue: Queue[Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self,
            "queue",
            isinstance(cast(object, self.queue), Queue),  # untyped callers
            "give a multiprocessing.Queue() created before romeways.start()",
        )

    def consumes_from(self) -> object | None:
        """The ``multiprocessing.Queue``: one consumer per queue object."""
        return self.queue


class MemoryQueueConnector(AQueueConnector[MemoryConnectorConfig, MemoryQueueConfig]):
    """Reads a ``multiprocessing.Queue`` from one dedicated thread, so waiting never blocks the
    event loop and an idle worker sleeps in ``Queue.get`` instead of polling."""

    def __init__(
        self,
        connector_config: MemoryConnectorConfig,
        config: MemoryQueueConfig,
        *,
        queue_name: str | None = None,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        self._queue = config.queue
        # Queue.get(timeout) waits while holding the queue's read lock, so a worker SIGKILLed
        # while idle would hold it forever and stall its restarted successor: wait on the pipe
        # without the lock, and take the lock only once a message is there. For _take_ready,
        # what Queue.get uses (the read lock, the maxsize semaphore) and a poll object on the
        # pipe made once (get_nowait builds a selector per call). A Queue without them (another
        # Python) is read the plain way, through Queue.get.
        self._pipe: QueuePipe | None = queue_pipe(config.queue)
        self._ready: select.poll | None = None
        if self._pipe is not None and hasattr(select, "poll"):
            self._ready = select.poll()
            self._ready.register(self._pipe.reader.fileno(), select.POLLIN)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = threading.Event()
        self._held: deque[object] = deque()  # resends that found the queue full
        # Deliveries are numbered by the messages get_messages has returned; the envelopes of
        # those not acked yet that came with a key or headers (plain ones are not kept).
        self._delivered = 0
        self._envelopes: dict[int, MemoryEnvelope] = {}

    async def on_start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"romeways-{self._queue_name}")

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        if self._executor is None:
            await self.on_start()
        # Messages already there are taken in the loop: a hop to the reader thread per chunk
        # costs more than the chunk (thread switch, GIL hand-offs); only waiting goes there.
        if self._held:
            return self._deliver(self._take_ready(max_chunk_size, self._take_held(max_chunk_size)))
        chunk = self._take_ready(max_chunk_size, [])
        if chunk or self._config.frequency == 0:
            return self._deliver(chunk)
        taking = cast(ThreadPoolExecutor, self._executor).submit(self._take, max_chunk_size)
        try:
            return self._deliver(await asyncio.wrap_future(taking))
        except asyncio.CancelledError:
            # A fetch given up (on stop) may still take messages in its thread: put them back
            # on the queue rather than drop them.
            taking.add_done_callback(self._put_back)
            raise

    def _deliver(self, items: list[object]) -> list[bytes]:
        """The bytes of a fetched chunk, numbering its messages as deliveries (message ``i`` is
        delivery ``base + i``) and keeping the envelopes of those with a key or headers."""
        base = self._delivered
        self._delivered = base + len(items)
        for i, item in enumerate(items):
            if type(item) is not bytes:  # the usual case is tested first: plain bytes
                if type(item) is MemoryEnvelope:
                    self._envelopes[base + i] = item
                    items[i] = item.data
                else:
                    items[i] = self._as_bytes(item)
        return cast("list[bytes]", items)

    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        """The key and headers a delivery not acked yet was published with (none for one put
        on the queue as bytes); the memory queue has no positions or timestamps to tell."""
        envelope = self._envelopes.get(delivery)
        if envelope is None:
            return _PLAIN if 0 <= delivery < self._delivered else None
        return MessageMetadata(key=envelope.key, headers=envelope.headers)

    async def ack(self, deliveries: Sequence[int]) -> None:
        if self._envelopes:
            for delivery in deliveries:
                self._envelopes.pop(delivery, None)

    def _take_held(self, max_chunk_size: int) -> list[object]:
        held = self._held
        return [held.popleft() for _ in range(min(max_chunk_size, len(held)))]

    def _put_back(self, taking: Future[list[object]]) -> None:
        """Return what a given-up fetch took; bounded, as a full ``Queue(maxsize)`` may never
        get room again once this worker stops fetching (and this may run in the loop)."""
        if taking.cancelled() or taking.exception() is not None:
            return
        lost = 0
        deadline = time.monotonic() + _PUT_BACK_TIMEOUT
        for data in taking.result():
            try:
                self._queue.put(data, timeout=max(0.0, deadline - time.monotonic()))
            except queue_module.Full:
                lost += 1
        if lost:
            logger.error(
                "memory queue %r (connector %r) stayed full for %.1fs at shutdown: %d message(s) "
                "taken by the last fetch could not be put back and are lost (the memory "
                "connector is at-most-once)",
                self._queue_name,
                self._connector_config.connector_name,
                _PUT_BACK_TIMEOUT,
                lost,
            )

    def _take_ready(self, max_chunk_size: int, chunk: list[object]) -> list[object]:
        """Add to ``chunk`` the messages already in the pipe, up to ``max_chunk_size``, without
        waiting. This is ``Queue.get_nowait`` per message less its two costs that dominated a
        drain: a selector built per call to poll the pipe, and the read lock taken per call."""
        if self._ready is None or self._pipe is None:  # no poll(2), or no pipe: the plain way
            try:
                while len(chunk) < max_chunk_size:
                    chunk.append(self._queue.get_nowait())
            except queue_module.Empty:
                pass
            return chunk
        reader, read_lock, free_slots = self._pipe
        if not read_lock.acquire(False):  # another consumer is reading
            return chunk
        try:
            while len(chunk) < max_chunk_size and self._ready.poll(0):
                data = reader.recv_bytes()
                free_slots.release()  # as Queue.get does, for a Queue(maxsize)
                item: object = cast(Any, ForkingPickler).loads(data)  # typeshed: a method
                chunk.append(item)
        finally:
            read_lock.release()
        return chunk

    def _take(self, max_chunk_size: int) -> list[object]:
        """Wait (in the reader thread) for messages; their objects as on the queue, unpacked
        by ``_deliver`` in the loop (so a given-up fetch puts back exactly what it took)."""
        chunk: list[object] = []
        try:
            frequency = self._config.frequency
            if frequency == 0:
                item = self._queue.get_nowait()
            elif self._pipe is None:
                item = self._get_in_slices(frequency)
            else:
                if not self._wait_for_data(self._pipe.reader, frequency):
                    return chunk
                item = self._queue.get(timeout=0.1)
            chunk.append(item)
        except queue_module.Empty:
            return chunk
        return self._take_ready(max_chunk_size, chunk)

    def _wait_for_data(self, reader: Connection, seconds: float) -> bool:
        """Wait up to ``seconds`` for the pipe to have data, in short slices so that ``close()``
        ends the wait promptly: a stopping worker gives its fetch up, but this thread would
        otherwise hold the process's exit back for as long as ``frequency``."""
        deadline = time.monotonic() + seconds
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if reader.poll(min(remaining, _WAIT_SLICE)):
                return not self._closed.is_set()
        return False

    def _get_in_slices(self, seconds: float) -> object:
        """``Queue.get`` for up to ``seconds`` (holding the queue's read lock while it waits),
        in slices so that ``close()`` ends the wait promptly; raises queue.Empty. For a Queue
        whose pipe cannot be watched."""
        deadline = time.monotonic() + seconds
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self._queue.get(timeout=min(remaining, _WAIT_SLICE))
            except queue_module.Empty:
                continue
        raise queue_module.Empty

    def _as_bytes(self, item: object) -> bytes:
        if isinstance(item, bytes):
            return item
        if isinstance(item, str):
            return item.encode()
        if isinstance(item, bytearray):
            return bytes(item)
        if isinstance(item, memoryview):
            return item.tobytes()
        try:
            return msgspec.json.encode(item)
        except (TypeError, msgspec.EncodeError):
            logger.error(
                "memory queue %r (connector %r) got a %s, which is not bytes, str or JSON-able; "
                "it is passed on as its repr() and will fail decoding unless the handler takes str",
                self._queue_name,
                self._connector_config.connector_name,
                type(item).__name__,
            )
            return repr(item).encode()

    async def send_messages(self, message: bytes) -> None:
        self._queue.put_nowait(message)

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Put ``message`` on the queue with its key and headers (as a MemoryEnvelope; as
        plain bytes when it has neither)."""
        if key is None and not headers:
            self._queue.put_nowait(message)
            return
        self._queue.put_nowait(MemoryEnvelope(data=message, key=key, headers=tuple(headers or ())))

    async def resend(self, delivery: int, message: bytes) -> None:
        """Back on the queue, with the key and headers it came with; held for this connector's
        next fetch when the queue is full."""
        envelope = self._envelopes.get(delivery)
        item: object = message
        if envelope is not None:
            item = MemoryEnvelope(data=message, key=envelope.key, headers=envelope.headers)
        try:
            self._queue.put_nowait(item)
        except queue_module.Full:
            self._held.append(item)
            logger.debug(
                "memory queue %r is full: a resend is held for this worker's next fetch",
                self._queue_name,
            )

    async def return_held(self, within: float) -> list[bytes]:
        """Put the held resends back on the queue (on shutdown, no more fetches to hand them
        out), waiting up to ``within`` seconds in all for room; the ones that found none."""
        held = self._held
        deadline = time.monotonic() + within
        while held:
            try:
                self._queue.put_nowait(held[0])
            except queue_module.Full:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_ROOM_POLL)
                continue
            held.popleft()
        unsent = [item.data if isinstance(item, MemoryEnvelope) else item for item in held]
        held.clear()
        return cast("list[bytes]", unsent)

    async def close(self) -> None:
        self._closed.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
