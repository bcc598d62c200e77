"""The ledger every fault test checks: which message ids were produced, and which were handled,
by which process, on which attempt.

Messages carry unique ids. Handlers (in any process: the test's own, a forked worker, a restarted
one) append one JSON line per event to a file opened ``O_APPEND``, one ``write()`` per line, so
lines from concurrent processes never interleave and a SIGKILLed writer loses at most its own
unwritten line. The test reads the file and computes ``lost = produced - handled`` and how often
each id was handled.

Events the fault tests use: ``start`` (a handler began), ``done`` (a handler finished), ``dead``
(a dead-letter hook got it), ``fetched``, ``ack`` and ``resend`` (a recording connector saw it).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec


class Item(msgspec.Struct, frozen=True):
    """The typed payload of fault-test messages: a unique id and optional padding."""

    id: str
    pad: str = ""


class Record(msgspec.Struct, frozen=True):
    """One ledger line."""

    event: str
    id: str
    pid: int
    attempt: int
    t: float
    extra: str = ""


_encode = msgspec.json.Encoder().encode
_decode_line = msgspec.json.Decoder(Record).decode


def make_ids(prefix: str, count: int) -> list[str]:
    """``count`` unique ids: ``prefix-000000``, ``prefix-000001``, ..."""
    return [f"{prefix}-{i:06d}" for i in range(count)]


def payload(message_id: str, pad: int = 0) -> bytes:
    """The JSON bytes of an ``Item`` with this id (and ``pad`` bytes of padding)."""
    return _encode(Item(id=message_id, pad="x" * pad))


def id_of(data: bytes) -> str:
    """The id in a message's bytes: a plain ``Item`` or a romeways resend envelope of one;
    ``"?"`` when the bytes carry none (bad input)."""
    try:
        decoded = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "?"
    if isinstance(decoded, dict) and isinstance(decoded.get("payload"), dict):
        decoded = decoded["payload"]
    if isinstance(decoded, dict) and isinstance(decoded.get("id"), str):
        return str(decoded["id"])
    return "?"


class Ledger:
    """An append-only file of ``Record`` lines, shared by every process that has its path."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fds: dict[int, int] = {}

    def _fd(self) -> int:
        pid = os.getpid()  # a forked child opens its own descriptor
        fd = self._fds.get(pid)
        if fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fds[pid] = fd
        return fd

    def write(self, event: str, message_id: str, attempt: int = 0, extra: str = "") -> None:
        """Append one record (one ``write()``: atomic with respect to other writers)."""
        record = Record(event, message_id, os.getpid(), attempt, time.time(), extra)
        os.write(self._fd(), _encode(record) + b"\n")

    def records(self, event: str | None = None) -> list[Record]:
        """Every complete record so far (of ``event`` only, if given), in file order."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        out = [_decode_line(line) for line in lines[:-1] if line]  # the last may be partial
        return [r for r in out if event is None or r.event == event]

    def ids(self, event: str) -> Counter[str]:
        """How many ``event`` records each id has."""
        return Counter(r.id for r in self.records(event))

    def pids(self, event: str | None = None) -> list[int]:
        """The processes that wrote records (of ``event``), in order of their first record."""
        seen: dict[int, None] = {}
        for r in self.records(event):
            seen.setdefault(r.pid, None)
        return list(seen)

    def tally(self, produced: Iterable[str], event: str = "done") -> Tally:
        """Compare the ``produced`` ids with those that have ``event`` records."""
        return Tally(frozenset(produced), self.ids(event))


@dataclass(frozen=True)
class Tally:
    """Produced ids against handled ones: ``lost``, ``duplicates`` and ``unexpected``."""

    produced: frozenset[str]
    handled: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> set[str]:
        """Produced and never handled."""
        return set(self.produced) - set(self.handled)

    @property
    def duplicates(self) -> dict[str, int]:
        """Ids handled more than once, with how many extra times."""
        return {i: n - 1 for i, n in self.handled.items() if n > 1 and i in self.produced}

    @property
    def duplicate_count(self) -> int:
        """Extra handlings in total."""
        return sum(self.duplicates.values())

    @property
    def unexpected(self) -> set[str]:
        """Handled but never produced (a corrupted or invented message)."""
        return set(self.handled) - set(self.produced)

    def summary(self) -> str:
        lost = sorted(self.lost)
        return (
            f"produced {len(self.produced)}, handled {len(set(self.handled))} distinct, "
            f"lost {len(lost)} {lost[:5]}, duplicates {self.duplicate_count}, "
            f"unexpected {sorted(self.unexpected)[:5]}"
        )
