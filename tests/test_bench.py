"""The benchmark runs on a tiny N and prints its table; no timing is asserted anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )


def test_quick_bench_prints_machine_info_and_a_row_per_variant() -> None:
    groups = ("drain", "latency", "idle", "decode", "growth")
    result = bench("--quick", "--reps", "1", *(f"--only={group}" for group in groups))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for fact in ("- cpu:", "- cores:", "- python:", "- versions: romeways"):
        assert fact in out
    assert "| scenario" in out and "| ours/raw |" in out
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ")
    ]
    assert rows[0][:3] == ["scenario", "variant", "metric"]
    pairs = {(row[1], row[2]) for row in rows[1:]}
    for pair in (
        ("romeways spawn_process=False", "rate (msg/s)"),
        ("romeways spawn_process=True", "rate (msg/s)"),
        ("raw thread (same process)", "rate (msg/s)"),
        ("raw thread (child process)", "rate (msg/s)"),
        ("romeways spawn_process=False", "p99 (ms)"),
        ("romeways worker process", "cpu (% of a core)"),
        ("romeways worker decode (chunks of 10), Order Struct", "rate (msg/s)"),
        ("stdlib json.loads + dataclass", "rate (msg/s)"),
        ("romeways worker process", "growth (%)"),
    ):
        assert pair in pairs, pair
    medians = [row[3] for row in rows[1:]]
    assert all(median != "-" for median in medians)
    assert "failed" not in result.stderr


def test_n_and_only_pick_the_size_and_the_scenarios() -> None:
    result = bench("--quick", "--reps", "1", "-n", "300", "--only", "drain")
    assert result.returncode == 0, result.stderr
    assert "memory drain 300 (in-process)" in result.stdout
    assert "decode" not in result.stdout and "latency" not in result.stdout


def test_bad_options_are_refused() -> None:
    assert bench("-n", "0").returncode == 2
    assert bench("--only", "nonsense").returncode == 2


def test_straggler_scenario_compares_max_concurrency_with_a_chunk_at_a_time() -> None:
    result = bench("--quick", "--reps", "1", "--only", "straggler")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| memory straggler")]
    variants = {row.split("|")[2].strip() for row in rows}
    assert variants == {
        "romeways max_concurrency=10",
        "romeways max_concurrency=None (a chunk at a time)",
    }
    assert "failed" not in result.stderr
