"""Bad input on a Redis stream (R8): every kind of undecodable entry is dead-lettered once,
acknowledged, logged without its payload, and the worker process lives on."""

from __future__ import annotations

import pickle
import signal
import time
from pathlib import Path

import pytest

from .ledger import make_ids, payload
from .procs import Scenario
from .redisapp import scenario_args
from .redishelp import add_entries, delete_streams, pending, run, shared_url, unique

pytestmark = pytest.mark.timeout(90)


class _Canary:
    """Unpickling this creates the directory ``path``: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.mkdir, (self.path,))


def test_redis_bad_input_mix_is_dead_lettered_with_the_worker_alive(tmp_path: Path) -> None:
    """R8: among 40 good ids, malformed JSON, non-UTF-8 bytes, schema-invalid JSON, empty
    bytes, a pickle, 900 KB of bad JSON and an entry with no ``data`` field (another producer's),
    plus a good 900 KB message, in a worker process: every good id handled once, each bad one
    dead-lettered once (logged without its payload), the pickle never unpickled, one worker
    process throughout, nothing left pending, and what comes next is handled."""
    url = shared_url()
    stream = unique("inputs")
    group = f"{stream}-g"
    canary = tmp_path / "UNPICKLED-CANARY"
    bad: list[bytes] = [
        b'{"id": "BADMARK-malformed", "pad": ',
        b'{"id": "BADMARK-\xff\xfe\xfa"}',
        b'{"id": 12345, "pad": "BADMARK-schema"}',
        b"",
        pickle.dumps(_Canary(str(canary))),
        b'{"id": "BADMARK-huge", "pad": [' + b"1," * 450_000 + b'"x"]}',
    ]
    goods = make_ids("r8", 40)
    values: list[bytes] = []
    for i, data in enumerate(bad):
        values += [payload(g) for g in goods[i * 5 : i * 5 + 5]]
        values.append(data)
    values += [payload("big", pad=900_000), *(payload(g) for g in goods[30:])]
    try:
        run(add_entries(url, stream, values))
        run(add_entries(url, stream, [b"BADMARK-foreign"], field=b"note"))
        options = scenario_args(url, stream, group, spawn=True, chunk=10)
        with Scenario(tmp_path, "redisapp", *options) as app:
            app.wait_for(
                "goods handled and bad dead-lettered",
                lambda lg: (
                    set(lg.ids("done")) >= {*goods, "big"}
                    and len(lg.records("dead")) >= len(bad) + 1
                ),
                30,
            )
            later = make_ids("r8-later", 5)
            run(add_entries(url, stream, [payload(i) for i in later]))
            app.wait_for("later ids handled", lambda lg: set(later) <= set(lg.ids("done")), 20)
            time.sleep(0.5)
            ledger = app.ledger
            tally = ledger.tally([*goods, "big", *later])
            assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
            assert len(ledger.records("dead")) == len(bad) + 1
            assert len(ledger.pids("done")) == 1, "the worker process was restarted"
            assert "exited unexpectedly" not in app.log()
            assert run(pending(url, stream, group)) == []
            app.signal(signal.SIGTERM)
            assert app.wait_exit(10) == 0, app.tail()
        log = app.log()
        assert log.count("dead-lettered a message") == len(bad) + 1
        assert "BADMARK" not in log, "a payload reached the log"
        assert not canary.exists(), "the pickle payload was unpickled"
    finally:
        run(delete_streams(url, stream))
