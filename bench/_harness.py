"""Scenarios, interleaved repetitions, medians, ratios and the printed table."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TextIO

Measurement = dict[str, float]


@dataclass(frozen=True)
class Target:
    """A goal for one metric of our variant: on its value, or on its ratio to the raw baseline."""

    on: Literal["value", "ratio"]
    op: Literal[">=", "<=", "<"]
    bound: float

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        if self.op == ">=":
            return subject >= self.bound
        if self.op == "<=":
            return subject <= self.bound
        return subject < self.bound

    def __str__(self) -> str:
        suffix = "x raw" if self.on == "ratio" else ""
        return f"{self.op} {self.bound:g}{suffix}"


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    digits: int = 0
    target: Target | None = None


@dataclass(frozen=True)
class Variant:
    """One way of doing the scenario's work. Ours (``raw=False``) is held to the metrics'
    targets and compared with the raw variant that ``baseline`` names, if any."""

    label: str
    run: Callable[[], Measurement]
    baseline: str | None = None
    raw: bool = False


@dataclass
class Scenario:
    name: str
    metrics: list[Metric]
    variants: list[Variant]
    skip: str | None = None
    """Why the scenario cannot run here (then it is listed, not run)."""
    reps: int | None = None
    """Repetitions when not the harness default (slow scenarios)."""


@dataclass
class Outcome:
    scenario: Scenario
    samples: dict[str, list[Measurement]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median(self, label: str, key: str) -> float | None:
        values = [m[key] for m in self.samples.get(label, []) if key in m]
        return statistics.median(values) if values else None

    def spread(self, label: str, key: str) -> tuple[float, float] | None:
        values = [m[key] for m in self.samples.get(label, []) if key in m]
        return (min(values), max(values)) if values else None


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_scenario(scenario: Scenario, reps: int) -> Outcome:
    """Run every variant ``reps`` times, interleaved and rotating which goes first."""
    outcome = Outcome(scenario)
    if scenario.skip:
        log(f"[{scenario.name}] skipped: {scenario.skip}")
        return outcome
    variants = scenario.variants
    for rep in range(min(scenario.reps or reps, reps)):
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            if variant.label in outcome.errors:
                continue
            started = time.perf_counter()
            try:
                measured = variant.run()
            except Exception as exc:
                outcome.errors[variant.label] = f"{type(exc).__name__}: {exc}"
                log(f"[{scenario.name}] {variant.label} failed:\n{traceback.format_exc()}")
                continue
            outcome.samples.setdefault(variant.label, []).append(measured)
            shown = ", ".join(f"{k}={v:,.3g}" for k, v in measured.items())
            log(
                f"[{scenario.name}] rep {rep + 1} {variant.label}: {shown} "
                f"({time.perf_counter() - started:.1f}s)"
            )
    return outcome


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(outcomes: list[Outcome]) -> list[list[str]]:
    rows = [["scenario", "variant", "metric", "median", "min..max", "ours/raw", "target", "ok"]]
    for outcome in outcomes:
        scenario = outcome.scenario
        if scenario.skip:
            rows.append([scenario.name, "-", "-", "-", "-", "-", "-", f"skipped: {scenario.skip}"])
            continue
        for variant in scenario.variants:
            if variant.label in outcome.errors:
                error = outcome.errors[variant.label]
                rows.append([scenario.name, variant.label, "-", "-", "-", "-", "-", error])
                continue
            for metric in scenario.metrics:
                value = outcome.median(variant.label, metric.key)
                if value is None:
                    continue
                spread = outcome.spread(variant.label, metric.key)
                low_high = "-"
                if spread is not None:
                    low_high = f"{_fmt(spread[0], metric.digits)}..{_fmt(spread[1], metric.digits)}"
                ratio = None
                if variant.baseline is not None:
                    raw = outcome.median(variant.baseline, metric.key)
                    ratio = value / raw if raw else None
                target = None if variant.raw else metric.target
                met = target.met(value, ratio) if target else None
                rows.append(
                    [
                        scenario.name,
                        variant.label,
                        f"{metric.key} ({metric.unit})",
                        _fmt(value, metric.digits),
                        low_high,
                        "-" if ratio is None else f"{ratio:.2f}x",
                        str(target) if target else "",
                        "" if met is None else ("yes" if met else "NO"),
                    ]
                )
    return rows


def print_table(rows: list[list[str]], out: TextIO) -> None:
    """A Markdown pipe table, padded so that it also reads well in a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5}

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "| " + " | ".join(cells) + " |"

    print(line(rows[0]), file=out)
    print(
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|",
        file=out,
    )
    for row in rows[1:]:
        print(line(row), file=out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    """1/5/15-minute load averages: other work on the machine makes the numbers noisier."""
    if not hasattr(os, "getloadavg"):
        return "?"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> list[tuple[str, str]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        ("date", now),
        ("cpu", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {usable if usable is not None else '?'} usable"),
        ("os", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("load average at start", load()),
        (
            "versions",
            ", ".join(f"{dist} {_version(dist)}" for dist in ("romeways", "msgspec", "aiokafka")),
        ),
    ]


@dataclass(frozen=True)
class Params:
    """Sizes of one benchmark run; ``quick()`` gives the tiny run the tests use."""

    reps: int = 5
    drain_n: int = 200_000
    latency_count: int = 2_000
    latency_rate: float = 500.0
    idle_seconds: float = 5.0
    decode_n: int = 200_000
    growth_n: int = 1_000_000
    growth_warmup: int = 50_000
    kafka_n: int = 200_000
    straggler_n: int = 200

    @classmethod
    def quick(cls) -> Params:
        return cls(
            reps=2,
            drain_n=2_000,
            latency_count=100,
            latency_rate=500.0,
            idle_seconds=0.5,
            decode_n=2_000,
            growth_n=5_000,
            growth_warmup=1_000,
            kafka_n=2_000,
            straggler_n=100,
        )
