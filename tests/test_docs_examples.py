"""The runnable example at the end of each feature page of the docs runs and prints what the
page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

# page -> lines its last python block prints
EXAMPLES = {
    "retry-backoff.md": ["charged order-17 on attempt 3"],
    "dead-letter-queue.md": ["replayed 1", "shipped ['order-1']"],
}


@pytest.mark.parametrize("page", sorted(EXAMPLES))
def test_the_example_runs(page: str, tmp_path: Path) -> None:
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    program = tmp_path / "example.py"
    program.write_text(blocks[-1])
    for line in EXAMPLES[page]:
        assert f"`{line}`" in text, f"{page} does not say it prints {line!r}"
    env = {**os.environ, "PYTHONPATH": str(DOCS.parent)}
    done = subprocess.run(
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == EXAMPLES[page], done.stderr
