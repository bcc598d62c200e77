"""docs/batch-handlers.md: its runnable example runs and does what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "batch-handlers.md"


def example() -> str:
    """The page's complete program: the Python block that runs ``main()``."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    (program,) = [block for block in blocks if 'if __name__ == "__main__":' in block]
    return str(program)


def test_bulk_insert_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "bulk_insert.py"
    script.write_text(example())
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    inserted, dead = proc.stdout.splitlines()
    match = re.fullmatch(r"inserted 196 orders in (\d+) batches \(largest (\d+)\)", inserted)
    assert match is not None, inserted
    batches, largest = int(match.group(1)), int(match.group(2))
    assert 1 < largest <= 50 and batches < 196  # bulk: chunks, not one message at a time
    reasons = [f"order {i}: negative amount" for i in (50, 100, 150, 200)]
    assert dead == f"dead-lettered 4: {', '.join(reasons)}"
