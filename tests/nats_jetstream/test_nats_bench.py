"""The NATS benchmark group runs on a tiny N and prints a row per variant (no timing is
asserted: ``make bench`` measures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_nats_bench_prints_every_variant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--reps", "1", "--only", "nats"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    ]
    pairs = {(row[1], row[2]) for row in rows[1:]}
    for pair in (
        ("romeways max_chunk_size=500", "steady (msg/s)"),
        ("raw nats-py fetch(500) + ack()", "steady (msg/s)"),
        ("romeways defaults", "p99 (ms)"),
        ("raw nats-py fetch(10, timeout=1) + ack()", "p99 (ms)"),
        ("romeways worker process, defaults", "cpu (% of a core)"),
    ):
        assert pair in pairs, (pair, result.stdout)
    assert all(row[3] != "-" for row in rows[1:]), result.stdout
    assert "failed" not in result.stderr
