"""The complete example of docs/opentelemetry.md runs and prints the three spans it promises:
``checkout`` -> ``send orders`` -> ``process orders``, one trace (console exporter output)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent.parent / "docs" / "opentelemetry.md"


def _example() -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    (program,) = [b for b in blocks if 'if __name__ == "__main__":' in b]
    return program


def _spans(output: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    at = 0
    while (start := output.find("{", at)) != -1:
        span, at = decoder.raw_decode(output, start)
        spans.append(span)
    return spans


def test_the_console_example_prints_one_trace(tmp_path: Path) -> None:
    script = tmp_path / "traced.py"
    script.write_text(_example())
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    spans = {span["name"]: span for span in _spans(done.stdout)}
    assert sorted(spans) == ["checkout", "process orders", "send orders"], done.stdout
    checkout, send, process = spans["checkout"], spans["send orders"], spans["process orders"]
    assert {s["context"]["trace_id"] for s in spans.values()} == {checkout["context"]["trace_id"]}
    assert send["parent_id"] == checkout["context"]["span_id"]
    assert process["parent_id"] == send["context"]["span_id"]
    assert send["kind"] == "SpanKind.PRODUCER" and process["kind"] == "SpanKind.CONSUMER"
    assert process["attributes"]["order.id"] == 42
    assert process["attributes"]["messaging.system"] == "memory"
