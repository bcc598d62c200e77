"""The Kafka connector's commit bookkeeping (``Offsets``), without a broker: per-batch state
checked against a model of one flag per offset, through random fetches, acks (whole-chunk
ranges, sorted lists, shuffled lists with duplicates and unknown numbers), rewinds, fetches that
go back, and revocations. The commit must always be the model's: the first offset not finished."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition

from romeways.connectors.kafka.offsets import Offsets

T0, T1, T2 = (TopicPartition("t", p) for p in range(3))


@dataclass(frozen=True)
class Rec:
    """A record as the bookkeeping sees it: its offset (and, for the model, whether it is a
    tombstone)."""

    offset: int
    value: bytes | None = b"v"


def fetch(offsets: Offsets[Rec], tp: TopicPartition, first: int, start: int, end: int) -> bool:
    """Add a batch of offsets ``start..end-1``, all with values, and advance as the connector
    does after a fetch; whether the commit moved."""
    offsets.add(tp, first, [Rec(o) for o in range(start, end)], start, end)
    return offsets.advance([tp])


def committed(offsets: Offsets[Rec], tp: TopicPartition) -> int | None:
    return offsets.to_commit.get(tp)


def test_whole_chunk_range_commits_past_every_batch_of_the_chunk() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 100, 103)  # deliveries 0..2
    fetch(offsets, T1, 3, 7, 9)  # deliveries 3..4
    touched = offsets.finish(range(0, 5))
    assert touched == {T0, T1}
    assert offsets.advance(touched)
    assert offsets.to_commit == {T0: 103, T1: 9}
    assert offsets.find(0) is None  # complete: nothing left to look up
    assert offsets._open == []


def test_first_fetch_position_is_not_committed_again() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 5, 8)
    assert not offsets.advance(offsets.finish([1, 2]))  # offset 5 unfinished: nothing new
    assert committed(offsets, T0) is None
    assert offsets.advance(offsets.finish([0]))
    assert committed(offsets, T0) == 8


def test_partial_acks_commit_the_finished_prefix_only() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 0, 6)
    offsets.advance(offsets.finish([1, 2, 4]))
    assert committed(offsets, T0) is None
    offsets.advance(offsets.finish([0]))
    assert committed(offsets, T0) == 3
    offsets.advance(offsets.finish([5]))
    assert committed(offsets, T0) == 3
    offsets.advance(offsets.finish([3]))
    assert committed(offsets, T0) == 6


def test_tombstones_count_as_finished() -> None:
    offsets: Offsets[Rec] = Offsets()
    # Offsets 10..14 where 10, 12 and 14 are tombstones: records 11 and 13 are deliveries 0, 1.
    offsets.add(T0, 0, [Rec(11), Rec(13)], 10, 15)
    assert offsets.advance([T0])
    assert committed(offsets, T0) == 11  # past the leading tombstone
    offsets.advance(offsets.finish([0]))
    assert committed(offsets, T0) == 13
    offsets.advance(offsets.finish([1]))
    assert committed(offsets, T0) == 15
    # A batch of tombstones only: finished at once.
    offsets.add(T0, 2, [], 15, 18)
    assert offsets.advance([T0])
    assert committed(offsets, T0) == 18


def test_unknown_and_repeated_deliveries_are_ignored() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 0, 3)
    assert offsets.finish([7, -1, 1000]) == set()
    offsets.advance(offsets.finish([1, 1, 1]))
    offsets.advance(offsets.finish([2, 2]))
    assert committed(offsets, T0) is None
    offsets.advance(offsets.finish([0]))
    assert committed(offsets, T0) == 3


def test_rewind_drops_from_the_offset_on_and_old_deliveries_stay_unknown() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 0, 4)  # deliveries 0..3
    fetch(offsets, T0, 4, 4, 6)  # deliveries 4..5
    offsets.advance(offsets.finish([0, 4, 5]))
    assert committed(offsets, T0) == 1
    offsets.truncate(T0, 2)  # delivery 2 (offset 2) was not resent: fetch again from 2
    assert offsets.find(2) is None and offsets.find(4) is None
    found = offsets.find(1)
    assert found is not None and found[1].offset == 1
    offsets.advance(offsets.finish([1]))
    assert committed(offsets, T0) == 2
    fetch(offsets, T0, 6, 2, 6)  # offsets 2..5 again as deliveries 6..9
    offsets.advance(offsets.finish([3, 4, 5]))  # the old numbers do not finish the new ones
    assert committed(offsets, T0) == 2
    offsets.advance(offsets.finish(range(6, 10)))
    assert committed(offsets, T0) == 6


def test_fetch_before_what_is_pending_keeps_offset_order() -> None:
    offsets: Offsets[Rec] = Offsets()
    fetch(offsets, T0, 0, 0, 5)
    offsets.advance(offsets.finish([0, 1, 3]))
    assert committed(offsets, T0) == 2
    assert not fetch(offsets, T0, 5, 3, 7)  # a seek made the fetcher go back to offset 3
    offsets.advance(offsets.finish([2]))
    assert committed(offsets, T0) == 3
    offsets.advance(offsets.finish(range(5, 9)))
    assert committed(offsets, T0) == 7


def test_forget_counts_unfinished_and_drops_the_partition() -> None:
    offsets: Offsets[Rec] = Offsets()
    offsets.assign(T0)
    offsets.assign(T1)
    fetch(offsets, T0, 0, 0, 3)
    fetch(offsets, T1, 3, 0, 2)
    offsets.advance(offsets.finish([0, 3]))
    assert offsets.forget({T0}) == 2
    assert T0 not in offsets and T1 in offsets
    assert T0 not in offsets.to_commit
    assert offsets.find(1) is None
    assert offsets.finish([1, 2]) == set()
    offsets.advance(offsets.finish([4]))
    assert offsets.to_commit == {T1: 2}


@dataclass
class ModelPartition:
    """One flag per offset: the obviously right bookkeeping the batches must agree with."""

    position: int
    flags: dict[int, bool] = field(default_factory=dict)  # offset -> finished, ascending
    delivery_of: dict[int, int] = field(default_factory=dict)  # value offset -> delivery
    batches: list[tuple[int, int]] = field(default_factory=list)  # (start, end)
    decided: int | None = None

    def truncate(self, offset: int, live: dict[int, tuple[TopicPartition, int]]) -> None:
        for o in [o for o in self.flags if o >= offset]:
            del self.flags[o]
            delivery = self.delivery_of.pop(o, None)
            if delivery is not None:
                live.pop(delivery, None)
        self.batches = [(s, min(e, offset)) for s, e in self.batches if s < offset]

    def commit(self) -> int | None:
        """Where the commit should be: the first unfinished offset, else the last batch's end;
        never lower than before."""
        if self.decided is None:
            return None
        unfinished = [o for o, done in self.flags.items() if not done]
        candidate = unfinished[0] if unfinished else self.batches[-1][1] if self.batches else -1
        self.decided = max(self.decided, candidate)
        return self.decided


def run_random_scenario(seed: int, steps: int = 400) -> None:
    rng = random.Random(seed)
    offsets: Offsets[Rec] = Offsets()
    partitions = [T0, T1, T2]
    model = {tp: ModelPartition(position=rng.randrange(0, 50)) for tp in partitions}
    live: dict[int, tuple[TopicPartition, int]] = {}  # delivery -> (tp, offset), not dropped
    next_delivery = 0
    chunks: list[range] = []
    for tp in partitions:
        offsets.assign(tp)

    def check(step: str) -> None:
        for tp in partitions:
            want = model[tp].commit()
            got = offsets._decided.get(tp)
            assert got == want, f"seed {seed}, after {step}: {tp} commit {got}, model {want}"
        for delivery, (tp, offset) in live.items():
            found = offsets.find(delivery)
            if not model[tp].flags[offset]:
                assert found is not None, f"seed {seed}, after {step}: lost delivery {delivery}"
            if found is not None:
                assert found[0] == tp and found[1].offset == offset, f"seed {seed}: {step}"
        for delivery in rng.sample(range(next_delivery), min(next_delivery, 30)):
            if delivery not in live:
                assert offsets.find(delivery) is None, f"seed {seed}, {step}: dead {delivery}"
        firsts = [b.first for b in offsets._open]
        assert firsts == sorted(firsts) and all(b.records for b in offsets._open)

    for _ in range(steps):
        op = rng.random()
        if op < 0.35:  # one fetch: a batch per partition, some with tombstones
            first_of_chunk = next_delivery
            fetched = []
            for tp in rng.sample(partitions, rng.randint(1, 3)):
                m = model[tp]
                start = m.position + (rng.randint(1, 3) if rng.random() < 0.1 else 0)
                if rng.random() < 0.05 and m.flags:  # the fetcher went back (a seek)
                    start = rng.choice(list(m.flags))
                end = start + rng.randint(1, 8)
                records = [Rec(o, None if rng.random() < 0.15 else b"v") for o in range(start, end)]
                values = [r for r in records if r.value is not None]
                if m.batches and start < m.batches[-1][1]:
                    m.truncate(start, live)
                if m.decided is None:
                    m.decided = start
                for r in records:
                    m.flags[r.offset] = r.value is None
                for i, r in enumerate(values):
                    m.delivery_of[r.offset] = next_delivery + i
                    live[next_delivery + i] = (tp, r.offset)
                m.batches.append((start, end))
                m.position = end
                offsets.add(tp, next_delivery, values, start, end)
                fetched.append(tp)
                next_delivery += len(values)
            offsets.advance(fetched)
            chunks.append(range(first_of_chunk, next_delivery))
            check("fetch")
        elif op < 0.75 and chunks:  # acks
            kind = rng.random()
            if kind < 0.4:
                deliveries: list[int] | range = chunks.pop(rng.randrange(len(chunks)))
            else:
                pool = list(rng.choice(chunks))
                deliveries = sorted(rng.sample(pool, rng.randint(0, len(pool))))
                if kind > 0.8:
                    deliveries = deliveries + deliveries[:2] + [next_delivery + 5, -3]
                    rng.shuffle(deliveries)
            for d in deliveries:
                if d in live:
                    tp, offset = live[d]
                    model[tp].flags[offset] = True
            touched = offsets.finish(deliveries)
            if touched:
                offsets.advance(touched)
            check(f"ack {deliveries!r}")
        elif op < 0.85:  # a failed resend: rewind to an unfinished delivery's offset
            pending = [(d, tp, o) for d, (tp, o) in live.items() if not model[tp].flags[o]]
            if pending:
                delivery, tp, offset = rng.choice(pending)
                assert offsets.find(delivery) == (tp, Rec(offset))
                model[tp].truncate(offset, live)
                model[tp].position = offset
                offsets.truncate(tp, offset)
                offsets.advance([tp])
                check(f"rewind {tp} to {offset}")
        elif op < 0.9:  # revocation, then the partition comes back from its commit
            tp = rng.choice(partitions)
            m = model[tp]
            unfinished = sum(1 for o in m.delivery_of if not m.flags[o])
            assert offsets.forget({tp}) == unfinished
            for delivery in m.delivery_of.values():
                live.pop(delivery, None)
            restart = m.decided if m.decided is not None else m.position
            model[tp] = ModelPartition(position=restart)
            offsets.assign(tp)
            check(f"revoke {tp}")
        elif op < 0.95:  # a commit went through
            offsets.to_commit.clear()
    # Finish everything: every partition commits past all it fetched.
    for delivery in list(live):
        tp, offset = live[delivery]
        model[tp].flags[offset] = True
    offsets.advance(offsets.finish(sorted(live)))
    check("finishing all")
    assert offsets._open == []


@pytest.mark.parametrize("seed", range(60))
def test_random_operations_match_the_per_offset_model(seed: int) -> None:
    run_random_scenario(seed)
