"""Private attributes of romeways' dependencies, each read here and nowhere else.

Each accessor returns None when the installed release no longer has its attribute (or it
changed shape), and its caller falls back to a plainer way, as it would on a loop or queue of
another kind. tests/core/test_private.py fails loudly on such a release, naming the attribute
and the version, so that ``make test-latest`` shows it before users meet the fallback.

- ``loop_queues``: asyncio's ``BaseEventLoop._ready`` and ``_scheduled`` (the worker's check
  that a handler left no callbacks behind).
- ``loop_signal_callback``: asyncio's ``_UnixSelectorEventLoop._signal_handlers`` and the
  ``Handle._callback``/``_args`` in it (composing stop signals with a loop's own handlers).
- ``queue_pipe``: ``multiprocessing.Queue``'s ``_reader``, ``_rlock`` and ``_sem`` (the memory
  connector's lock-free wait and its batched reads).
- ``fetcher_with_wait`` / ``set_fetch_wait``: aiokafka's ``AIOKafkaConsumer._fetcher`` and its
  ``_fetch_max_wait_ms`` (the Kafka connector's adaptive fetch wait).
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, cast


def loop_queues(loop: object) -> tuple[Sized, Sized] | None:
    """The loop's queue of ready callbacks and its heap of timers, which grow when a handler
    starts a task or schedules a callback; None for a loop without them (uvloop, a new
    asyncio)."""
    found = getattr(loop, "_ready", None), getattr(loop, "_scheduled", None)
    if all(isinstance(queue, Sized) for queue in found):
        return cast("tuple[Sized, Sized]", found)
    return None


def loop_signal_callback(
    loop: object, signum: int
) -> tuple[Callable[..., object], tuple[Any, ...]] | None:
    """The callback (and its arguments) ``loop.add_signal_handler`` put on ``signum``, from the
    private table of asyncio's Unix loops; None when there is none or no such table."""
    table: object = getattr(loop, "_signal_handlers", None)
    if not isinstance(table, dict):
        return None
    handle: object = cast("dict[int, object]", table).get(signum)
    callback: object = getattr(handle, "_callback", None)
    args: object = getattr(handle, "_args", None) or ()
    if callable(callback) and isinstance(args, tuple):
        return callback, cast("tuple[object, ...]", args)
    return None


class QueuePipe(NamedTuple):
    """What ``multiprocessing.Queue.get`` uses: the pipe's read end, the read lock, and the
    semaphore that bounds a ``Queue(maxsize)`` (released once per message taken)."""

    reader: Connection
    read_lock: Any
    free_slots: Any


def queue_pipe(queue: object) -> QueuePipe | None:
    """The pipe, read lock and slot semaphore of a ``multiprocessing.Queue``; None when the
    queue no longer has them as this module knows them."""
    state: dict[str, object] = getattr(queue, "__dict__", {})
    reader = state.get("_reader")
    read_lock = state.get("_rlock")
    free_slots = state.get("_sem")
    if (
        isinstance(reader, Connection)
        and all(hasattr(read_lock, name) for name in ("acquire", "release"))
        and hasattr(free_slots, "release")
    ):
        return QueuePipe(reader, read_lock, free_slots)
    return None


def fetcher_with_wait(consumer: object) -> object | None:
    """A started aiokafka consumer's fetcher, which reads ``_fetch_max_wait_ms`` each time it
    builds a FetchRequest (aiokafka has no public way to change a running consumer's wait);
    None when there is no such fetcher (not started, or another aiokafka)."""
    fetcher: object = getattr(consumer, "_fetcher", None)
    wait: object = getattr(fetcher, "_fetch_max_wait_ms", None)
    if isinstance(wait, int) and not isinstance(wait, bool):
        return fetcher
    return None


def set_fetch_wait(fetcher: object, wait_ms: int) -> None:
    """Have a fetcher from ``fetcher_with_wait`` wait ``wait_ms`` in its next FetchRequests."""
    cast(Any, fetcher)._fetch_max_wait_ms = wait_ms
