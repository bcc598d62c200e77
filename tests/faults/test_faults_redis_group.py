"""Two consumers of one Redis consumer group: a dead consumer's entries are claimed by the
survivor and the dead one removed from the group (R4); messages held on purpose longer than
claim_idle (a delayed resend, a slow handler) are not stolen by the other consumer (R5)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ledger import make_ids, payload
from .procs import Scenario
from .redisapp import scenario_args
from .redishelp import add_entries, consumers, delete_streams, pending, run, shared_url, unique

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stream() -> Iterator[str]:
    name = unique("group")
    yield name
    run(delete_streams(shared_url(), name))


def test_redis_dead_consumers_entries_are_claimed_by_the_survivor(
    tmp_path: Path, stream: str
) -> None:
    """R4: consumers 'victim' and 'survivor' (in-process apps on two "hosts"); the victim's
    process is SIGKILLed while it holds a chunk. After claim_idle (1.5 s) the survivor claims
    and handles those entries (delivered a second time), then removes 'victim' from the group.
    0 lost; duplicates at most the victim's chunk."""
    url, group, chunk = shared_url(), f"{stream}-g", 10
    ids = make_ids("r4", 200)
    run(add_entries(url, stream, [payload(i) for i in ids]))
    common = {"chunk": chunk, "sequential": True, "claim_idle": 1.5, "handler_seconds": 0.02}
    victim_args = scenario_args(url, stream, group, consumer="victim", **common)
    survivor_args = scenario_args(url, stream, group, consumer="survivor", **common)
    with (
        Scenario(tmp_path, "redisapp", *victim_args, name="victim") as victim,
        Scenario(tmp_path, "redisapp", *survivor_args, name="survivor") as survivor,
    ):
        ledger = victim.ledger
        victim.wait_for("the victim handling", lambda lg: victim.pid in lg.pids("done"), 20)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.proc.wait(5)
        held = run(consumers(url, stream, group)).get("victim", 0)
        assert held > 0, "the victim held nothing when it died"
        survivor.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 40)
        claims = [r for r in ledger.records("fetched") if r.pid == survivor.pid and "#2" in r.extra]
        assert len(claims) == held, (held, claims)
        assert min(r.t for r in claims) - killed_at >= 1.4, "claimed before claim_idle"
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        assert tally.duplicate_count <= chunk, tally.summary()
        survivor.wait_log(r"removed consumer 'victim' from the group", 10)
        assert list(run(consumers(url, stream, group))) == ["survivor"]
        assert run(pending(url, stream, group)) == []
    print(f"R4 redis claim: victim held {held}, claimed {len(claims)}; {tally.summary()}")


def test_redis_messages_held_past_claim_idle_are_not_stolen(tmp_path: Path, stream: str) -> None:
    """R5: with claim_idle 1 s, a delayed resend (ResendException(delay=3)) and a handler that
    runs 3 s hold their entries for three times claim_idle while a second consumer of the group
    looks for idle entries: neither is claimed. Each id is handled once (the delayed one twice:
    attempt 0, then its resend), nothing lost."""
    url, group = shared_url(), f"{stream}-g"
    ids = ["delayed", "slow", *make_ids("r5", 20)]
    run(add_entries(url, stream, [payload(i) for i in ids]))
    common = {
        "claim_idle": 1.0,
        "delay_id": "delayed",
        "delay_seconds": 3.0,
        "slow_id": "slow",
        "slow_seconds": 3.0,
        "chunk": 5,
    }
    a_args = scenario_args(url, stream, group, consumer="a", **common)
    b_args = scenario_args(url, stream, group, consumer="b", **common)
    with (
        Scenario(tmp_path, "redisapp", *a_args, name="a") as a,
        Scenario(tmp_path, "redisapp", *b_args, name="b") as b,
    ):
        a.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 30)
        time.sleep(1.5)  # a late steal would show up now
        ledger = a.ledger
        starts = ledger.ids("start")
        assert starts["slow"] == 1, ledger.records("start")
        assert [r.attempt for r in ledger.records("start") if r.id == "delayed"] == [0, 1]
        tally = ledger.tally(ids)
        assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
        assert "claimed entry" not in a.log() + b.log()
        assert run(pending(url, stream, group)) == []
    held = f"delayed started {starts['delayed']}x, slow {starts['slow']}x"
    print(f"R5 redis held past claim_idle: {held}; {tally.summary()}")
