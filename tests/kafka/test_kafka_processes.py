"""Consumer processes on a real broker: a group sharing partitions, and crashes or clean stops
followed by a restart. Every produced id must reach the ledger at least once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from broker import create_topic, produce

from .conftest import ConsumerProcess, read_ledger, run_async, wait_until

PARTITIONS = 3
CHUNK = 10


def produce_ids(bootstrap: str, topic: str, count: int, prefix: str = "id") -> list[str]:
    """Create ``topic`` with three partitions and produce ``count`` ids spread over them."""
    ids = [f"{prefix}-{i:05d}" for i in range(count)]

    async def go() -> None:
        await create_topic(bootstrap, topic, partitions=PARTITIONS)
        for partition in range(PARTITIONS):
            mine = ids[partition::PARTITIONS]
            await produce(bootstrap, topic, [i.encode() for i in mine], partition=partition)

    run_async(go())
    return ids


def handled(ledger: Path) -> Counter[str]:
    return Counter(payload for _, payload in read_ledger(ledger))


def test_three_partitions_two_consumer_processes(
    tmp_path: Path,
    kafka_bootstrap: str,
    names: Callable[[str], str],
    ledger_consumer: Callable[..., ConsumerProcess],
) -> None:
    topic, group = names("shared"), names("shared-group")
    ledger = tmp_path / "ledger.txt"
    run_async(create_topic(kafka_bootstrap, topic, partitions=PARTITIONS))
    first = ledger_consumer(topic=topic, group=group, ledger=ledger, spawn=True)
    first.wait_for_output("was assigned partitions", timeout=30)
    second = ledger_consumer(topic=topic, group=group, ledger=ledger, spawn=True)
    # The first member is assigned twice: everything alone, then its share after the rebalance.
    second.wait_for_output("was assigned partitions", timeout=40)
    first.wait_for_output("was assigned partitions", timeout=40, count=2)

    ids = produce_ids(kafka_bootstrap, topic, 90)
    wait_until(lambda: set(handled(ledger)) >= set(ids), 40, "every id in the ledger")

    assert first.terminate() == 0, first.output()
    assert second.terminate() == 0, second.output()
    counts = handled(ledger)
    assert set(counts) == set(ids)
    pids = Counter(pid for pid, _ in read_ledger(ledger))
    assert len(pids) == 2, f"both processes must have handled messages: {pids}"
    assert sum(counts.values()) == len(ids), "no rebalance happened, so nothing is redelivered"


def test_sigkill_mid_stream_then_restart_handles_every_id(
    tmp_path: Path,
    kafka_bootstrap: str,
    names: Callable[[str], str],
    ledger_consumer: Callable[..., ConsumerProcess],
) -> None:
    topic, group = names("killed"), names("killed-group")
    ledger = tmp_path / "ledger.txt"
    ids = produce_ids(kafka_bootstrap, topic, 300)
    options = {"topic": topic, "group": group, "ledger": ledger, "chunk": CHUNK, "sleep": 0.02}

    first = ledger_consumer(**options)
    wait_until(lambda: len(read_ledger(ledger)) >= 60, 40, "the first consumer to get going")
    first.kill()
    assert first.proc.returncode == -9
    assert len(set(handled(ledger))) < len(ids), "the kill came too late to test anything"

    second = ledger_consumer(**options)
    wait_until(lambda: set(handled(ledger)) >= set(ids), 60, "every id in the ledger")
    assert second.terminate() == 0, second.output()

    counts = handled(ledger)
    assert set(counts) == set(ids), f"lost: {sorted(set(ids) - set(counts))[:10]}"
    duplicates = sum(counts.values()) - len(ids)
    assert duplicates <= CHUNK * PARTITIONS, f"{duplicates} redeliveries"


def test_sigterm_then_restart_redelivers_at_most_a_chunk_per_partition(
    tmp_path: Path,
    kafka_bootstrap: str,
    names: Callable[[str], str],
    ledger_consumer: Callable[..., ConsumerProcess],
) -> None:
    topic, group = names("stopped"), names("stopped-group")
    ledger = tmp_path / "ledger.txt"
    ids = produce_ids(kafka_bootstrap, topic, 300)
    options = {
        "topic": topic,
        "group": group,
        "ledger": ledger,
        "chunk": CHUNK,
        "sleep": 0.02,
        "spawn": True,
    }

    first = ledger_consumer(**options)
    wait_until(lambda: len(read_ledger(ledger)) >= 60, 40, "the first consumer to get going")
    assert first.terminate() == 0, first.output()
    assert "consumer stopped cleanly" in first.output()
    assert len(set(handled(ledger))) < len(ids), "the stop came too late to test anything"

    second = ledger_consumer(**options)
    wait_until(lambda: set(handled(ledger)) >= set(ids), 60, "every id in the ledger")
    assert second.terminate() == 0, second.output()

    counts = handled(ledger)
    assert set(counts) == set(ids)
    duplicates = sum(counts.values()) - len(ids)
    assert duplicates <= CHUNK * PARTITIONS, f"{duplicates} redeliveries"
