"""``python -m bench [--quick] [-n N] [--reps R] [--only SCENARIO ...]``: run the benchmark and
print machine info and a Markdown table of medians and ratios (ours / raw) on stdout; progress
goes to stderr."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from . import decode, kafka, memory, nats, rabbitmq, redis, straggler
from ._harness import (
    Params,
    Scenario,
    load,
    log,
    machine_info,
    print_table,
    run_scenario,
    table,
)

GROUPS: dict[str, Callable[[Params], list[Scenario]]] = {
    "drain": lambda p: memory.drain_scenarios(p),
    "latency": lambda p: [memory.latency_scenario(p)],
    "idle": lambda p: [memory.idle_cpu_scenario(p)],
    "decode": decode.scenarios,
    "growth": lambda p: [memory.growth_scenario(p)],
    "straggler": straggler.memory_scenarios,
    "kafka": lambda p: [*kafka.scenarios(p), *straggler.kafka_scenarios(p)],
    "nats": nats.scenarios,
    "rabbitmq": rabbitmq.scenarios,
    "redis": redis.scenarios,
}


def parse(argv: list[str] | None) -> tuple[Params, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    parser.add_argument("-n", type=int, help="messages per drain and decode run")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 5)")
    parser.add_argument("--growth-n", type=int, help="messages for RSS growth (default 1M)")
    parser.add_argument("--kafka-n", type=int, help="messages per Kafka drain (default 200k)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(GROUPS),
        metavar="SCENARIO",
        help=f"run only this scenario group (repeatable): {', '.join(GROUPS)}",
    )
    args = parser.parse_args(argv)
    params = Params.quick() if args.quick else Params()
    changes: dict[str, int] = {}
    if args.n is not None:
        changes |= {"drain_n": args.n, "decode_n": args.n}
    if args.reps is not None:
        changes["reps"] = args.reps
    if args.growth_n is not None:
        changes["growth_n"] = args.growth_n
    if args.kafka_n is not None:
        changes["kafka_n"] = args.kafka_n
    if any(v < 1 for v in changes.values()):
        parser.error("counts must be >= 1")
    return dataclasses.replace(params, **changes), args.only or list(GROUPS)


def main(argv: list[str] | None = None) -> int:
    params, groups = parse(argv)
    info = machine_info()
    log("machine: " + "; ".join(f"{k}: {v}" for k, v in info))
    outcomes = []
    try:
        for group in groups:
            for scenario in GROUPS[group](params):
                outcomes.append(run_scenario(scenario, params.reps))
    finally:
        kafka.stop()
        redis.stop()
        rabbitmq.stop()
    print()
    for key, value in info:
        print(f"- {key}: {value}")
    print(f"- load average at end: {load()}")
    print(f"- repetitions: {params.reps} (interleaved; medians shown)\n")
    print_table(table(outcomes), sys.stdout)
    failed = any(outcome.errors for outcome in outcomes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
